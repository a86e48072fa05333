"""The studies' runs of docs/papers.md: each recipe's own command on the shared real samples.

- tamim2025: the MobileNetV2 (offline ImageNet weights) and custom CNN arms as one sweep on the
  4-class sample, a few epochs on the CPU: a check that the recipe runs on the real layout and how
  far each arm gets, not a reproduction;
- mondal2021: a smoke run on the C-NMC sample with the tiny stand-in backbones (`debug=tiny`), then
  the ensemble command of the recipe's header: every job and the comparison run, no result.

    python benchmarks/studies.py --aria ../shared/data/aria --cnmc ../shared/data/cnmc [--epochs 3]
    python benchmarks/studies.py --tiny     # synthetic cells in both layouts, debug=tiny

Records each arm's test metrics and the wall time of each sweep (benchmarks/results.json).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from mlflow.tracking import MlflowClient  # noqa: E402
from results import record  # noqa: E402  (this folder's results file)

from allcls.data.synthetic import SyntheticSpec, materialise  # noqa: E402
from allcls.models.weights import convert_file, packaged_weights  # noqa: E402

QUIET = ["trainer.enable_progress_bar=false"]  # a benchmark's log, not a terminal


def timed(command: list[str], work: Path) -> float:
    """Run one of the project's entry points in `work` (its store: work/mlruns); its seconds."""
    work.mkdir(parents=True, exist_ok=True)
    start = time.time()
    subprocess.run([sys.executable, *command], cwd=work, check=True)
    return time.time() - start


def tamim(root: Path, epochs: int, tiny: bool, work: Path) -> tuple[dict, list[list[str]]]:
    weights = convert_file(packaged_weights("mobilenetv2_100"), "mobilenetv2_100", work / "mobilenetv2_100_in1k.pth")
    overrides = ["debug=tiny"] if tiny else [f"backbone.weights={weights}", f"trainer.max_epochs={epochs}"]
    seconds = timed([str(PROJECT / "train.py"), "-m", "experiment=tamim2025", f"dataset.root={root}", *overrides,
                     *QUIET], work)
    client = MlflowClient(f"sqlite:///{work}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("aria")
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'train'")
    arms = {run.info.run_name.split("-")[0]: {key: run.data.metrics[key] for key in
                                              ("test/f1_weighted", "test/balanced_accuracy")} for run in runs}
    rows = [[arm, f"{metrics['test/f1_weighted']:.3f}", f"{metrics['test/balanced_accuracy']:.3f}"]
            for arm, metrics in sorted(arms.items())]
    return {"arms": arms, "sweep_seconds": seconds, "runs": len(runs)}, rows


def mondal(root: Path, tiny: bool, work: Path) -> tuple[dict, list[list[str]]]:
    train = timed([str(PROJECT / "train.py"), "-m", "experiment=mondal2021", f"dataset.root={root}", "debug=tiny",
                   *QUIET], work)
    quick = ["nested_cv=false", "bootstrap=100"] if tiny else []  # --tiny: the comparison, not its intervals
    ensemble = timed([str(PROJECT / "ensemble.py"), "experiment_name=cnmc", "sweep_id=latest", *quick], work)
    client = MlflowClient(f"sqlite:///{work}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("cnmc")
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'train'")
    (comparison,) = client.search_runs([experiment.experiment_id], "tags.stage = 'ensemble'")
    figures = {"jobs_finished": sum(run.info.status == "FINISHED" for run in runs), "jobs": len(runs),
               "validation_cells": int(runs[0].data.params["n_val"]), "test_cells": int(runs[0].data.params["n_test"]),
               "chosen_scheme": comparison.data.tags["chosen_scheme"],
               "selection_reason": comparison.data.tags["selection_reason"],
               "ensemble_status": comparison.info.status, "seconds": train + ensemble}
    return figures, [[f"{figures['jobs_finished']} of {figures['jobs']} jobs finished",
                      f"{figures['validation_cells']} validation / {figures['test_cells']} test cells",
                      f"ensemble {figures['ensemble_status'].lower()}, chose {figures['chosen_scheme']}",
                      f"{figures['seconds']:.0f} s"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aria", help="the 4-class dataset root (the shared sample: ../shared/data/aria)")
    parser.add_argument("--cnmc", help="the C-NMC root (the shared sample: ../shared/data/cnmc)")
    parser.add_argument("--epochs", type=int, default=3, help="tamim2025's epochs on the CPU")
    parser.add_argument("--tiny", action="store_true", help="synthetic cells in both layouts, debug=tiny")
    args = parser.parse_args()
    if not args.tiny and not (args.aria and args.cnmc):
        parser.error("--aria and --cnmc are required (the shared samples in ../shared/data), or --tiny")
    with tempfile.TemporaryDirectory(prefix="allcls-studies-") as folder:
        work = Path(folder)
        if args.tiny:  # as few cells as the layouts' splits take
            aria = materialise(SyntheticSpec(layout="aria", image_size=32, subjects_per_class=3, cells_per_subject=4,
                                             test_subjects_per_class=1), work / "data")
            cnmc = materialise(SyntheticSpec(layout="cnmc", image_size=32, cells_per_subject=2,
                                             test_subjects_per_class=1), work / "data")
        else:
            aria, cnmc = Path(args.aria).resolve(), Path(args.cnmc).resolve()
        tamim_figures, tamim_rows = tamim(aria, args.epochs, args.tiny, work / "tamim2025")
        mondal_figures, mondal_rows = mondal(cnmc, args.tiny, work / "mondal2021")
    record("studies", {"tamim2025": tamim_figures, "mondal2021": mondal_figures},
           {"aria": "synthetic (aria layout)" if args.tiny else args.aria,
            "cnmc": "synthetic (cnmc layout)" if args.tiny else args.cnmc,
            "tamim2025": "debug=tiny" if args.tiny else f"{args.epochs} epochs", "mondal2021": "debug=tiny"},
           {"main": [["arm", "test weighted F1", "test balanced accuracy"], *tamim_rows],
            "mondal2021": [["jobs", "cells", "comparison", "wall time"], *mondal_rows]})
    for row in [*tamim_rows, *mondal_rows]:
        print(" | ".join(row))


if __name__ == "__main__":
    main()
