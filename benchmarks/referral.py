"""Real data: does a model know when not to answer? A MobileNetV2 ensemble fine-tuned on the shared
sample of the 4-class ALL image dataset, packaged with its decision rule, then shown its own test
cells, real C-NMC cells (another dataset: near out of distribution) and the far probes
(photographs, documents, noise, flat colour). With `--demo-store`, also the demo's registered
ensemble (`make demo`: demo-ensemble@champion, trained on synthetic cells) on its own synthetic
test split with the rule `make demo` packages, then shown the real cells of both datasets.

    python benchmarks/referral.py --aria ../shared/data/aria --cnmc ../shared/data/cnmc [--demo-store mlruns] \
        [--epochs 8] [--seeds 0 1] [--size 224] [--coverage 0.9] [--max-miss-rate 0.05] [--work DIR]
    python benchmarks/referral.py --tiny     # what `make test` runs: synthetic stand-ins of both datasets
                                             # and a tiny demo store of its own, in a temporary folder

Training takes seeds x about 3 minutes on two cores at 224 px. The commands (train, ensemble,
package, evaluate) are the ones a user types, run one after the other in this process
(benchmarks/commands.py). Records what the decision rule does on each test split (share referred
and why, the errors referred, the accuracy of what is answered, coverage per class, the protected
miss rate, the gate on the split and on each probe set) and how many real cells of the other
dataset(s) the gate refuses, as the tables of docs/referral.md: `main` (the real-data model) and
`demo` (the demo's ensemble, with --demo-store).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from commands import entry  # noqa: E402  (this folder's: the commands run in this process)
from mlflow.tracking import MlflowClient  # noqa: E402
from results import record  # noqa: E402  (this folder's results file)

from allcls.inference.decision import REASONS  # noqa: E402
from allcls.models.weights import convert_file, packaged_weights  # noqa: E402

MALIGNANT = "[Early,Pre,Pro]"
DEMO_RULE = {"coverage": 0.8, "protect": "all", "max_miss_rate": 0.2}  # what `make demo` packages
# --tiny's stand-ins: synthetic cells in each dataset's layout, and the demo store's training
TINY_DEMO_TRAIN = ["dataset=synthetic", "dataset.reader.image_size=32", "dataset.reader.subjects_per_class=15",
                   "dataset.reader.cells_per_subject=2", "dataset.reader.test_subjects_per_class=2",
                   "backbone=custom_cnn", "backbone.input_size=32", "trainer.max_epochs=1", "data.num_workers=0",
                   "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "seed=0,1"]
TINY_ENSEMBLE = ["bootstrap=10", "cv_folds=2", *[f"schemes.{s}=null" for s in (
    "proportional", "majority_vote", "best_single", "top_k", "simplex_grid", "greedy", "log_loss")]]


def cells_of(root: Path, pattern: str) -> list[str]:
    return sorted(str(p) for p in root.rglob(pattern))


def shown(model_uri: str, paths: list[str]) -> dict:
    """The packaged model shown image files: how many, the share refused as out of distribution,
    the share referred."""
    rows = mlflow.pyfunc.load_model(model_uri).predict(pd.DataFrame({"path": paths}))
    return {"cells": len(rows), "out_of_distribution": float(rows["refer_reason"].str.contains("out of distribution")
                                                             .mean()),
            "referred": float(rows["refer"].mean())}


def evaluation_figures(client: MlflowClient, run_id: str, work: Path, replicates: int, seed: int = 0) -> dict:
    """What an evaluation run measured on the test split: its test metrics, the gate on each probe
    set, the cells, subjects and cells the gate refused, and the accuracy of the cells answered with
    its 95% interval over subjects (evaluation logs that one without it)."""
    from allcls.inference.conformal import share
    from allcls.metrics.bootstrap import bootstrap_multiplicities, resampling_groups

    run = client.get_run(run_id)
    folder = work / f"evaluation-{run_id}"
    decisions = pd.read_csv(client.download_artifacts(run_id, "predictions/test_decisions.csv", str(folder)))
    predictions = pd.read_parquet(client.download_artifacts(run_id, "predictions/test.parquet", str(folder)))
    subjects = predictions.set_index("sample_id")["subject"].reindex(decisions["sample_id"]).astype(str).tolist()
    draws = bootstrap_multiplicities(resampling_groups(subjects), replicates, seed)
    refer = decisions["refer"].to_numpy(bool)
    answered = share((decisions["label"] == decisions["true"]).to_numpy(), ~refer, draws)
    probes = pd.read_csv(client.download_artifacts(run_id, "metrics/ood_probes.csv", str(folder)))
    gate = decisions["refer_reason"].fillna("").str.contains("out of distribution")
    return {"metrics": {k: v for k, v in run.data.metrics.items() if k.startswith(("test/", "conformal/"))},
            "cells": len(decisions), "subjects": len(set(subjects)), "refused_by_gate": int(gate.sum()),
            "answered_accuracy": {"value": answered.value, "ci_low": answered.low, "ci_high": answered.high},
            "probes": probes.to_dict("records")}


def percent(value: float, digits: int = 1) -> str:
    return f"{100 * value:.{digits}f} %"


def interval(metrics: dict, key: str, as_percent: bool = False, digits: int = 3) -> str:
    """A logged metric with its 95% interval (`_ci_low`, `_ci_high`); evaluation logs no metric it
    could not measure (no cell of the class, none answered)."""
    if key not in metrics:
        return "not measured"
    value, low, high = (metrics.get(f"{key}{end}", np.nan) for end in ("", "_ci_low", "_ci_high"))
    if as_percent:
        return f"{percent(value)} [{100 * low:.1f}, {100 * high:.1f}]"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def decision_rows(found: dict, classes: list[str], coverage: float, protected: str, max_miss_rate: float) -> list:
    """The rows docs/referral.md shows for a model on its test split."""
    metrics = found["metrics"]
    keys = {reason: "test/decision/refer_" + reason.replace(" ", "_") for reason in REASONS}
    reasons = [f"{reason} {percent(metrics[key])}" for reason, key in keys.items() if key in metrics]
    answered = found["answered_accuracy"]
    errors = metrics.get("test/decision/errors_referred")
    coverage_per_class = ", ".join(f"{name} {interval(metrics, f'test/conformal/coverage_{name}', digits=2)}"
                                   for name in classes if f"test/conformal/coverage_{name}" in metrics)
    probes = pd.DataFrame(found["probes"])
    far = probes[probes["name"] == "all far probes"].iloc[0]
    near = probes[probes["kind"] == "near"]
    return [
        ["accuracy (every test cell)", f"{metrics['test/accuracy']:.3f}"],
        ["cells referred", f"{interval(metrics, 'test/decision/refer_rate', True)}: {', '.join(reasons) or 'none'}"],
        ["accuracy of the cells answered", "none answered" if not np.isfinite(answered["value"]) else
         f"{answered['value']:.3f} [{answered['ci_low']:.3f}, {answered['ci_high']:.3f}]"],
        ["its errors that were referred", "no error to refer" if errors is None else percent(errors)],
        [f"coverage per class (asked {percent(coverage, 0)})", coverage_per_class or "no prediction sets"],
        [f"{protected} (asked at most {percent(max_miss_rate, 0)})",
         interval(metrics, "test/decision/miss_rate", True)],
        ["test cells refused by the gate", f"{percent(metrics.get('test/ood/rejected', np.nan))} "
                                           f"({found['refused_by_gate']} of {found['cells']})"],
        [f"far probes refused ({int(far['images'])}: photographs, documents, noise, flat colour)",
         f"{percent(far['rejected'])}, AUROC {far['auroc']:.3f}"],
        [f"near probes refused: {' / '.join(near['name'])}", " / ".join(percent(v) for v in near["rejected"])],
    ]


def train_and_package(args, work: Path) -> tuple[str, dict]:
    """The real-data model: trained, ensembled, packaged with its rule, registered, evaluated on its test split."""
    work.mkdir(parents=True, exist_ok=True)
    weights = work / "mobilenetv2_100_in1k.pth"
    if not weights.exists():
        convert_file(packaged_weights("mobilenetv2_100"), "mobilenetv2_100", weights)
    seeds = ",".join(str(s) for s in args.seeds)
    entry("allcls-train", "-m", "dataset=aria", f"dataset.root={args.aria}", "backbone=mobilenetv2",
          "backbone.pretrained=true", f"backbone.weights={weights}", f"backbone.input_size={args.size}",
          "augmentation=basic", f"trainer.max_epochs={args.epochs}", "callbacks.early_stopping=null",
          f"seed={seeds}", "trainer.enable_progress_bar=false", *args.train_extra, cwd=work)
    entry("allcls-ensemble", "experiment_name=aria", "sweep_id=latest", *args.ensemble, cwd=work)
    rule = [f"coverage={args.coverage}", f"referral.protect={MALIGNANT}",
            f"referral.max_miss_rate={args.max_miss_rate}"]
    entry("allcls-package", "run_id=latest", "experiment_name=aria", "register_as=aria-ensemble",
          "alias=champion", *rule, *args.package_extra, cwd=work)
    client = MlflowClient(f"sqlite:///{work}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("aria")
    ensemble = client.search_runs([experiment.experiment_id], "tags.stage = 'ensemble'",
                                  order_by=["attributes.start_time DESC"])[0]
    entry("allcls-evaluate", f"run_id={ensemble.info.run_id}", "split=test", f"bootstrap={args.bootstrap}",
          f"conformal.coverage={args.coverage}", f"referral.protect={MALIGNANT}",
          f"referral.max_miss_rate={args.max_miss_rate}", cwd=work)
    evaluation = client.search_runs([experiment.experiment_id], "tags.stage = 'evaluate'",
                                    order_by=["attributes.start_time DESC"])[0]
    return "models:/aria-ensemble@champion", evaluation_figures(client, evaluation.info.run_id, work, args.bootstrap)


def evaluate_demo(store: Path, work: Path, replicates: int) -> dict:
    """The demo's registered ensemble evaluated on its own test split with the rule `make demo` packages
    (the evaluation run goes to that store)."""
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    run_id = client.get_model_version_by_alias("demo-ensemble", "champion").tags["run_id"]
    entry("allcls-evaluate", f"run_id={run_id}", "split=test", f"bootstrap={replicates}",
          f"conformal.coverage={DEMO_RULE['coverage']}", f"referral.protect={DEMO_RULE['protect']}",
          f"referral.max_miss_rate={DEMO_RULE['max_miss_rate']}", cwd=store.parent)
    experiment = client.get_run(run_id).info.experiment_id
    evaluation = client.search_runs([experiment], "tags.stage = 'evaluate'", order_by=["attributes.start_time DESC"])[0]
    return evaluation_figures(client, evaluation.info.run_id, work, replicates)


def tiny_data(work: Path) -> tuple[Path, Path, Path]:
    """Stand-ins for --tiny: synthetic cells in the 4-class dataset's layout and in C-NMC's (32 px),
    and a demo store (demo-ensemble@champion: two custom_cnn runs on synthetic C-NMC cells, their
    equal-weight ensemble packaged with the rule `make demo` packages; the probes are left to the
    evaluation, which measures them)."""
    from allcls.data.synthetic import SyntheticSpec, materialise

    aria = materialise(SyntheticSpec(layout="aria", image_size=32, subjects_per_class=5, cells_per_subject=5,
                                     test_subjects_per_class=1), work / "aria")
    cnmc = materialise(SyntheticSpec(layout="cnmc", image_size=32, subjects_per_class=3, cells_per_subject=2,
                                     test_subjects_per_class=1, seed=1), work / "cnmc")
    demo = work / "demo"
    demo.mkdir()
    entry("allcls-train", "-m", *TINY_DEMO_TRAIN, cwd=demo)
    entry("allcls-ensemble", "experiment_name=synthetic-cnmc", "sweep_id=latest", *TINY_ENSEMBLE, cwd=demo)
    entry("allcls-package", "run_id=latest", "experiment_name=synthetic-cnmc", "register_as=demo-ensemble",
          "alias=champion", f"coverage={DEMO_RULE['coverage']}", f"referral.protect={DEMO_RULE['protect']}",
          f"referral.max_miss_rate={DEMO_RULE['max_miss_rate']}", "bootstrap=10", "ood.probes=false", cwd=demo)
    return aria, cnmc, demo / "mlruns"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--aria", type=Path, help="the 4-class ALL image dataset (Original/...)")
    parser.add_argument("--cnmc", type=Path, help="C-NMC 2019 in its original layout")
    parser.add_argument("--demo-store", type=Path, default=None,
                        help="a project's mlruns/ with demo-ensemble@champion: also evaluate it and show it real cells")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--coverage", type=float, default=0.9)
    parser.add_argument("--max-miss-rate", type=float, default=0.05)
    parser.add_argument("--bootstrap", type=int, default=500, help="the real-data evaluation's replicates")
    parser.add_argument("--demo-bootstrap", type=int, default=1000, help="the demo evaluation's replicates")
    parser.add_argument("--work", type=Path, default=None, help="where the runs go (default: a temporary folder)")
    parser.add_argument("--tiny", action="store_true",
                        help="synthetic stand-ins of both datasets (32 px) and a tiny demo store of its own, one "
                             "epoch, 32 px input, equal weights only, 50 replicates")
    args = parser.parse_args()
    args.ensemble, args.train_extra, args.package_extra = ["bootstrap=200"], [], []
    if not args.tiny and (args.aria is None or args.cnmc is None):
        parser.error("--aria and --cnmc are needed (or --tiny)")
    if not args.tiny:  # the commands run from the work folder
        args.aria, args.cnmc = args.aria.resolve(), args.cnmc.resolve()
    with tempfile.TemporaryDirectory(prefix="allcls-referral-") as scratch:
        work = (args.work or Path(scratch)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        if args.tiny:
            args.aria, args.cnmc, args.demo_store = tiny_data(work / "tiny")
            # (80 %: the most that 7 validation images per class support)
            args.epochs, args.size, args.bootstrap, args.demo_bootstrap, args.coverage = 1, 32, 50, 50, 0.8
            args.ensemble, args.package_extra = TINY_ENSEMBLE, ["bootstrap=10", "ood.probes=false"]
            args.train_extra = ["data.num_workers=0", "dataset.verify_images=false"]
        aria_cells = cells_of(args.aria.resolve() / "Original", "*.jpg")
        cnmc_cells = cells_of(args.cnmc.resolve(), "*.bmp")
        figures: dict = {}
        tables: dict = {}
        print(f"Training {len(args.seeds)} MobileNetV2 member(s) on {args.aria}, ensembling, packaging, evaluating:",
              flush=True)
        uri, figures["real"] = train_and_package(args, work / "real")
        mlflow.set_tracking_uri(f"sqlite:///{work}/real/mlruns/mlflow.db")
        figures["real"]["cnmc_cells"] = shown(uri, cnmc_cells)
        shown_cnmc = figures["real"]["cnmc_cells"]
        tables["main"] = [
            [f"on its test split ({figures['real']['cells']} cells)", ""],
            *decision_rows(figures["real"], ["Benign", "Early", "Pre", "Pro"], args.coverage,
                           "malignant cells cleared as Benign", args.max_miss_rate),
            [f"real C-NMC cells ({shown_cnmc['cells']}), another dataset",
             f"{percent(shown_cnmc['out_of_distribution'])} refused as out of distribution"]]
        if args.demo_store is not None:
            store = args.demo_store.resolve()
            figures["demo"] = evaluate_demo(store, work, args.demo_bootstrap)
            mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
            real = {"cnmc_cells": shown("models:/demo-ensemble@champion", cnmc_cells),
                    "aria_cells": shown("models:/demo-ensemble@champion", aria_cells)}
            figures["demo"].update(real)
            demo = figures["demo"]
            tables["demo"] = [
                [f"on its synthetic test split ({demo['cells']} cells, {demo['subjects']} subjects)", ""],
                *decision_rows(demo, ["hem", "all"], DEMO_RULE["coverage"], "leukemic cells cleared as normal",
                               DEMO_RULE["max_miss_rate"]),
                [f"real C-NMC cells ({real['cnmc_cells']['cells']}) and real 4-class cells "
                 f"({real['aria_cells']['cells']}), never seen",
                 f"{percent(real['cnmc_cells']['out_of_distribution'])} / "
                 f"{percent(real['aria_cells']['out_of_distribution'])} refused as out of distribution"]]
    setting = {"aria": "synthetic stand-in" if args.tiny else str(args.aria),
               "cnmc": "synthetic stand-in" if args.tiny else str(args.cnmc),
               "demo_store": None if args.demo_store is None else "its own tiny store" if args.tiny
               else str(args.demo_store), "epochs": args.epochs, "seeds": args.seeds, "size": args.size,
               "coverage": args.coverage, "protect": MALIGNANT, "max_miss_rate": args.max_miss_rate,
               "bootstrap": args.bootstrap, "demo_bootstrap": args.demo_bootstrap, "demo_rule": DEMO_RULE}
    record("referral", figures, setting, tables)
    for table in tables.values():
        print("\n".join(" | ".join(row) for row in table) + "\n")


if __name__ == "__main__":
    main()
