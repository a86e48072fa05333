"""Leakage, measured: the same model trained on the same synthetic cells, split by subject (allcls's
default) and split by image (what most ALL papers did: a patient's cells on both sides), over
several seeds; the inflation of each headline test metric, with a bootstrap 95% interval.

The synthetic subjects differ in stain and in the shape and texture of their cells, as patients do,
so a model can learn a subject's look as well as its class; an image split rewards that. Every
setting of the data and the model is an argument (defaults: the figures of docs/papers.md), e.g.
patients that differ more: --subject-morphology 1.0 --stain-spread 3 --separation 0.6.

    python benchmarks/leakage.py [--seeds 0 1 2 3 4] [--epochs 8] [--image-size 48] [--subjects-per-class 15]
        [--cells-per-subject 12] [--test-subjects-per-class 5] [--separation 0.8] [--stain-spread 2]
        [--subject-morphology 0.5] [--val-fraction 0.2] [--test-fraction 0.2] [--backbone custom_cnn]
        [--replicates 1000] [--override KEY=VALUE ...]
    python benchmarks/leakage.py --tiny     # seconds: what `make test` runs

Records the table (metric | split by subject | split by image | inflation [95% CI]) with the
per-seed scores (benchmarks/results.py).
"""

from __future__ import annotations

import argparse
import os
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
from results import record  # noqa: E402  (this folder's results file)

from allcls.metrics.bootstrap import bootstrap_multiplicities, resampling_groups  # noqa: E402
from allcls.metrics.vectorised import scores  # noqa: E402
from allcls.predictions import probabilities_of  # noqa: E402

HEADLINE = ("accuracy", "balanced_accuracy", "f1_weighted", "auroc", "kappa")


def data_overrides(args) -> list[str]:
    """C-NMC layout; patients that look like themselves; classes that are not trivially apart;
    the split from fractions of whole subjects (or of images), drawn anew for each seed."""
    return ["dataset=synthetic", f"dataset.reader.image_size={args.image_size}",
            f"dataset.reader.subjects_per_class={args.subjects_per_class}",
            f"dataset.reader.cells_per_subject={args.cells_per_subject}",
            f"dataset.reader.test_subjects_per_class={args.test_subjects_per_class}",
            f"dataset.reader.separation={args.separation}", f"dataset.reader.stain_spread={args.stain_spread}",
            f"dataset.reader.subject_morphology={args.subject_morphology}", "dataset.split.hints={}",
            f"dataset.split.val_fraction={args.val_fraction}", f"dataset.split.test_fraction={args.test_fraction}",
            "dataset.split.seed=${seed}"]


def model_overrides(args) -> list[str]:
    return [f"backbone={args.backbone}", f"backbone.input_size={args.image_size}", "augmentation=basic",
            "callbacks.early_stopping=null", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
            f"trainer.max_epochs={args.epochs}"]


def train_sweep(work: Path, seeds: list[int], overrides: list[str]) -> float:
    start = time.time()
    command = [sys.executable, str(PROJECT / "train.py"), "-m", *overrides, f"seed={','.join(map(str, seeds))}",
               "dataset.split.by=subject,image"]
    done = subprocess.run(command, cwd=work, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"train.py failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.time() - start


def test_tables(work: Path) -> dict[str, list[pd.DataFrame]]:
    """Each split kind's test prediction tables, one per seed, in the seeds' order."""
    client = MlflowClient(f"sqlite:///{work}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("synthetic-cnmc")
    tables: dict[str, list[pd.DataFrame]] = {"subject": [], "image": []}
    for run in client.search_runs([experiment.experiment_id], "tags.stage = 'train'",
                                  order_by=["attributes.start_time ASC"]):
        local = client.download_artifacts(run.info.run_id, "predictions/test.parquet", str(work / run.info.run_id))
        tables[run.data.params["split_by"]].append(pd.read_parquet(local))
    return tables


def replicated(table: pd.DataFrame, seed: int, replicates: int) -> dict[str, tuple[float, np.ndarray]]:
    """Each headline metric: its value, and its values over bootstrap replicates resampling subjects."""
    probabilities, labels = probabilities_of(table)[None], table["label"].to_numpy()
    draws = bootstrap_multiplicities(resampling_groups(table["subject"].tolist()), replicates, seed)
    point, resampled = scores(probabilities, labels, HEADLINE), scores(probabilities, labels, HEADLINE, draws)
    return {name: (float(point[name][0]), resampled[name]) for name in HEADLINE}


def inflation(tables: dict[str, list[pd.DataFrame]], replicates: int) -> dict[str, dict]:
    """Each headline metric: the mean over seeds of each split kind, their difference (image minus
    subject) and its bootstrap 95% interval, and the seeds' own scores."""
    results = {kind: [replicated(table, seed, replicates) for seed, table in enumerate(kind_tables)]
               for kind, kind_tables in tables.items()}
    found = {}
    for name in HEADLINE:
        means = {kind: float(np.mean([r[name][0] for r in runs])) for kind, runs in results.items()}
        spread = {kind: np.mean([r[name][1] for r in runs], axis=0) for kind, runs in results.items()}
        low, high = np.nanpercentile(spread["image"] - spread["subject"], [2.5, 97.5])
        found[name] = {"subject": means["subject"], "image": means["image"],
                       "inflation": means["image"] - means["subject"], "ci95": [float(low), float(high)],
                       "per_seed": {kind: [r[name][0] for r in runs] for kind, runs in results.items()}}
    return found


def seed_range(per_seed: dict[str, list[float]]) -> str:
    """The inflation of each seed (image split minus subject split of the same seed), min-max."""
    each = [image - subject for image, subject in zip(per_seed["image"], per_seed["subject"], strict=True)]
    return f"{min(each):+.3f} to {max(each):+.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=48, help="the cells' size, and the model's input size")
    parser.add_argument("--subjects-per-class", type=int, default=15)
    parser.add_argument("--cells-per-subject", type=int, default=12)
    parser.add_argument("--test-subjects-per-class", type=int, default=5,
                        help="the C-NMC layout's preliminary test subjects (split with the others here)")
    parser.add_argument("--separation", type=float, default=0.8, help="lower: the classes look more alike")
    parser.add_argument("--stain-spread", type=float, default=2.0, help="how far subjects' stains differ")
    parser.add_argument("--subject-morphology", type=float, default=0.5,
                        help="how far each subject's cells differ in shape and texture from its class's")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--backbone", default="custom_cnn")
    parser.add_argument("--replicates", type=int, default=1000, help="bootstrap replicates (test subjects resampled)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="any other override of train.py (repeatable)")
    parser.add_argument("--tiny", action="store_true",
                        help="one seed, one epoch, 32 px, 5+2 subjects per class of 4 cells, 100 replicates")
    args = parser.parse_args()
    if args.tiny:
        args.seeds, args.epochs, args.image_size, args.replicates = [0], 1, 32, 100
        args.subjects_per_class, args.cells_per_subject, args.test_subjects_per_class = 5, 4, 2
    overrides = [*data_overrides(args), *model_overrides(args), *args.override]
    with tempfile.TemporaryDirectory(prefix="allcls-leakage-") as folder:
        work = Path(folder)
        seconds = train_sweep(work, args.seeds, overrides)
        tables = test_tables(work)
    found = inflation(tables, args.replicates)
    # The interval resamples each run's test subjects; the seeds' own spread (data, split and
    # training all drawn again) is the last column.
    header = ["metric", "split by subject", "split by image", "inflation [95% CI, test subjects resampled]",
              "inflation seed by seed (min-max)"]
    rows = [[name, f"{f['subject']:.3f}", f"{f['image']:.3f}",
             f"{f['inflation']:+.3f} [{f['ci95'][0]:+.3f}, {f['ci95'][1]:+.3f}]", seed_range(f["per_seed"])]
            for name, f in found.items()]
    setting = {key: getattr(args, key) for key in (
        "seeds", "epochs", "image_size", "subjects_per_class", "cells_per_subject", "test_subjects_per_class",
        "separation", "stain_spread", "subject_morphology", "val_fraction", "test_fraction", "backbone",
        "replicates", "override")}
    test_cells = {kind: [len(t) for t in kind_tables] for kind, kind_tables in tables.items()}
    record("leakage", {"metrics": found, "test_cells": test_cells, "training_seconds": seconds}, setting,
           {"main": [header, *rows]})
    print(f"{len(args.seeds)} seeds x 2 splits, {args.backbone} at {args.image_size} px, {args.epochs} epochs, "
          f"{seconds / 60:.1f} min\n")
    print("\n".join(" | ".join(row) for row in [header, *rows]))


if __name__ == "__main__":
    main()
