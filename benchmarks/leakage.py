"""Leakage, measured: the same model trained on the same synthetic cells, split by subject (allcls's
default) and split by image (what most ALL papers did: a patient's cells on both sides), over
several seeds; the inflation of each headline test metric, with a bootstrap 95% interval.

The synthetic subjects differ in stain and in the shape and texture of their cells, as patients do,
so a model can learn a subject's look as well as its class; an image split rewards that.

    python benchmarks/leakage.py [--seeds 0 1 2 3 4] [--epochs 8]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from allcls.metrics.bootstrap import bootstrap_multiplicities, resampling_groups  # noqa: E402
from allcls.metrics.vectorised import scores  # noqa: E402
from allcls.predictions import probabilities_of  # noqa: E402

HEADLINE = ("accuracy", "balanced_accuracy", "f1_weighted", "auroc", "kappa")
REPLICATES = 1000
DATA = [  # C-NMC layout; patients that look like themselves; classes that are not trivially apart
    "dataset=synthetic", "dataset.reader.image_size=48", "dataset.reader.subjects_per_class=15",
    "dataset.reader.cells_per_subject=12", "dataset.reader.test_subjects_per_class=5",
    "dataset.reader.separation=0.8", "dataset.reader.stain_spread=2", "dataset.reader.subject_morphology=0.5",
    "dataset.split.hints={}", "dataset.split.val_fraction=0.2", "dataset.split.test_fraction=0.2",
    "dataset.split.seed=${seed}",
]
MODEL = ["backbone=custom_cnn", "backbone.input_size=48", "augmentation=basic", "callbacks.early_stopping=null",
         "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def train_sweep(work: Path, seeds: list[int], epochs: int) -> float:
    start = time.time()
    command = [sys.executable, str(PROJECT / "train.py"), "-m", *DATA, *MODEL, f"trainer.max_epochs={epochs}",
               f"seed={','.join(map(str, seeds))}", "dataset.split.by=subject,image"]
    subprocess.run(command, cwd=work, check=True, capture_output=True, text=True)
    return time.time() - start


def test_tables(work: Path) -> dict[str, list[pd.DataFrame]]:
    """Each split kind's test prediction tables, one per seed."""
    client = MlflowClient(f"sqlite:///{work}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("synthetic-cnmc")
    tables: dict[str, list[pd.DataFrame]] = {"subject": [], "image": []}
    for run in client.search_runs([experiment.experiment_id], "tags.stage = 'train'"):
        local = client.download_artifacts(run.info.run_id, "predictions/test.parquet", str(work / run.info.run_id))
        tables[run.data.params["split_by"]].append(pd.read_parquet(local))
    return tables


def replicated(table: pd.DataFrame, seed: int) -> dict[str, tuple[float, np.ndarray]]:
    """Each headline metric: its value, and its values over bootstrap replicates resampling subjects."""
    probabilities, labels = probabilities_of(table)[None], table["label"].to_numpy()
    draws = bootstrap_multiplicities(resampling_groups(table["subject"].tolist()), REPLICATES, seed)
    point, replicates = scores(probabilities, labels, HEADLINE), scores(probabilities, labels, HEADLINE, draws)
    return {name: (float(point[name][0]), replicates[name]) for name in HEADLINE}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="allcls-leakage-") as folder:
        work = Path(folder)
        seconds = train_sweep(work, args.seeds, args.epochs)
        tables = test_tables(work)
    print(f"{len(args.seeds)} seeds x 2 splits, custom_cnn at 48 px, {args.epochs} epochs, {seconds / 60:.1f} min; "
          f"{platform.processor() or platform.machine()}, Python {platform.python_version()}\n")
    print("| metric | split by subject | split by image | inflation [95% CI] |\n|---|---|---|---|")
    results = {kind: [replicated(table, seed) for seed, table in enumerate(kind_tables)]
               for kind, kind_tables in tables.items()}
    for name in HEADLINE:
        means = {kind: np.mean([r[name][0] for r in runs]) for kind, runs in results.items()}
        spread = {kind: np.mean([r[name][1] for r in runs], axis=0) for kind, runs in results.items()}
        low, high = np.nanpercentile(spread["image"] - spread["subject"], [2.5, 97.5])
        print(f"| {name} | {means['subject']:.3f} | {means['image']:.3f} | "
              f"{means['image'] - means['subject']:+.3f} [{low:+.3f}, {high:+.3f}] |")


if __name__ == "__main__":
    main()
