"""Real data: does a model know when not to answer? A MobileNetV2 ensemble fine-tuned on the shared
sample of the 4-class ALL image dataset, packaged with its decision rule, then shown its own test
cells, real C-NMC cells (another dataset: near out of distribution) and the far probes
(photographs, documents, noise, flat colour).

    python benchmarks/referral.py --aria ../shared/data/aria --cnmc ../shared/data/cnmc \
        [--epochs 8] [--seeds 0 1] [--coverage 0.9] [--max-miss-rate 0.05] [--work DIR]
    python benchmarks/referral.py --demo-store mlruns --aria ../shared/data/aria --cnmc ../shared/data/cnmc

The first trains (seeds x about 3 minutes on two cores at 224 px), ensembles, packages and evaluates,
and prints what the decision rule does on the test split (share referred and why, the errors
referred, the accuracy of what is answered, coverage per class, the protected miss rate, the gate on
each probe set) and on the real C-NMC cells. With `--demo-store` it trains nothing: it shows the real
cells of both datasets to `demo-ensemble@champion` of that store (a model trained on synthetic cells)
and reports how many it refuses as out of distribution. Writes `referral.json` (`referral-demo.json`)
beside the work folder.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from allcls.models.weights import convert_file, packaged_weights  # noqa: E402

MALIGNANT = "[Early,Pre,Pro]"


def command(program: str, *args: str, cwd: Path) -> None:
    """An entry script (train.py ...) or console script (allcls-package) of this environment, run from `cwd`."""
    started = time.time()
    argv = [sys.executable, str(PROJECT / program)] if program.endswith(".py") else \
        [str(Path(sys.executable).parent / program)]
    subprocess.run([*argv, *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    print(f"  {program} {' '.join(args[:2])} ... {time.time() - started:.0f} s", flush=True)


def cells_of(root: Path, pattern: str) -> list[str]:
    return sorted(str(p) for p in root.rglob(pattern))


def shown(model_uri: str, paths: list[str]) -> pd.DataFrame:
    """The packaged model's rows for image files."""
    return mlflow.pyfunc.load_model(model_uri).predict(pd.DataFrame({"path": paths}))


def ood_share(rows: pd.DataFrame) -> float:
    return float(rows["refer_reason"].str.contains("out of distribution").mean())


def train_and_package(args, work: Path) -> tuple[str, dict]:
    weights = work / "mobilenetv2_100_in1k.pth"
    if not weights.exists():
        convert_file(packaged_weights("mobilenetv2_100"), "mobilenetv2_100", weights)
    seeds = ",".join(str(s) for s in args.seeds)
    command("train.py", "-m", "dataset=aria", f"dataset.root={args.aria}", "backbone=mobilenetv2",
            "backbone.pretrained=true", f"backbone.weights={weights}", f"backbone.input_size={args.size}",
            "augmentation=basic", f"trainer.max_epochs={args.epochs}", "callbacks.early_stopping=null",
            f"seed={seeds}", "trainer.enable_progress_bar=false", cwd=work)
    command("ensemble.py", "experiment_name=aria", "sweep_id=latest", "bootstrap=200", cwd=work)
    rule = [f"coverage={args.coverage}", f"referral.protect={MALIGNANT}",
            f"referral.max_miss_rate={args.max_miss_rate}"]
    command("allcls-package", "run_id=latest", "experiment_name=aria", "register_as=aria-ensemble",
            "alias=champion", *rule, cwd=work)
    client = MlflowClient(f"sqlite:///{work}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("aria")
    ensemble = client.search_runs([experiment.experiment_id], "tags.stage = 'ensemble'",
                                  order_by=["attributes.start_time DESC"])[0]
    command("evaluate.py", f"run_id={ensemble.info.run_id}", "split=test", "bootstrap=500",
            f"conformal.coverage={args.coverage}", f"referral.protect={MALIGNANT}",
            f"referral.max_miss_rate={args.max_miss_rate}", cwd=work)
    evaluation = client.search_runs([experiment.experiment_id], "tags.stage = 'evaluate'",
                                    order_by=["attributes.start_time DESC"])[0]
    metrics = {k: round(v, 4) for k, v in evaluation.data.metrics.items()
               if k.startswith(("test/decision", "test/ood", "test/conformal", "test/balanced_accuracy",
                                "test/accuracy"))}
    return "models:/aria-ensemble@champion", metrics


def evaluate_demo(store: Path) -> dict:
    """The demo's registered ensemble evaluated on its own test split with the rule `make demo` packages."""
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    run_id = client.get_model_version_by_alias("demo-ensemble", "champion").tags["run_id"]
    command("evaluate.py", f"run_id={run_id}", "split=test", "conformal.coverage=0.8", "referral.protect=all",
            "referral.max_miss_rate=0.2", cwd=store.parent)
    experiment = client.get_run(run_id).info.experiment_id
    evaluation = client.search_runs([experiment], "tags.stage = 'evaluate'", order_by=["attributes.start_time DESC"])[0]
    return {k: round(v, 4) for k, v in evaluation.data.metrics.items()
            if k.startswith(("test/decision", "test/ood", "test/conformal", "test/balanced_accuracy"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--aria", type=Path, required=True, help="the 4-class ALL image dataset (Original/...)")
    parser.add_argument("--cnmc", type=Path, required=True, help="C-NMC 2019 in its original layout")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--coverage", type=float, default=0.9)
    parser.add_argument("--max-miss-rate", type=float, default=0.05)
    parser.add_argument("--work", type=Path, default=None, help="where the runs go (default: a temporary folder)")
    parser.add_argument("--demo-store", type=Path, default=None,
                        help="a project's mlruns/ with demo-ensemble@champion: show it real cells instead of training")
    args = parser.parse_args()
    aria_cells, cnmc_cells = cells_of(args.aria.resolve() / "Original", "*.jpg"), cells_of(args.cnmc.resolve(), "*.bmp")
    results: dict = {"command": " ".join(sys.argv), "machine": f"{platform.processor() or platform.machine()}, "
                     f"{__import__('os').cpu_count()} cores", "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory(prefix="allcls-referral-") as scratch:
        work = (args.work or Path(scratch)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        if args.demo_store is not None:
            mlflow.set_tracking_uri(f"sqlite:///{args.demo_store.resolve()}/mlflow.db")
            uri = "models:/demo-ensemble@champion"
            results["demo test split (synthetic)"] = evaluate_demo(args.demo_store.resolve())
            for name, paths in (("real C-NMC cells", cnmc_cells), ("real 4-class cells", aria_cells)):
                rows = shown(uri, paths)
                results[name] = {"cells": len(rows), "out of distribution": round(ood_share(rows), 3),
                                 "referred": round(float(rows["refer"].mean()), 3)}
        else:
            print(f"Training {len(args.seeds)} MobileNetV2 member(s) on {args.aria}, ensembling, packaging, "
                  "evaluating:", flush=True)
            uri, metrics = train_and_package(args, work)
            mlflow.set_tracking_uri(f"sqlite:///{work}/mlruns/mlflow.db")
            results["aria test split (the model's own)"] = metrics
            rows = shown(uri, cnmc_cells)
            results["real C-NMC cells (another dataset)"] = {"cells": len(rows),
                                                             "out of distribution": round(ood_share(rows), 3),
                                                             "referred": round(float(rows["refer"].mean()), 3)}
    print(json.dumps(results, indent=2))
    name = "referral-demo.json" if args.demo_store is not None else "referral.json"
    (work.parent / name).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
