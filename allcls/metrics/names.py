"""Metric names and which way is better, decided once.

Every logged metric is `<split>/<metric>` (`val/f1_weighted`); a per-class metric appends the class
(`test/recall_all`). Code that compares metric values never asks which way is better: it ranks
by `regret`, which is lower-is-better for every metric (the autogluon way).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

# Scores of a whole table of probabilities (allcls.metrics.vectorised), in reporting order.
SCALAR = ("accuracy", "balanced_accuracy", "f1_weighted", "f1_macro", "kappa", "auroc", "log_loss", "ece")
# One value per class, one-vs-rest. Recall is the sensitivity of clinical papers.
PER_CLASS = ("precision", "recall", "specificity")
LOWER_IS_BETTER = frozenset({"log_loss", "ece", "loss"})

# What training logs: per epoch for train and val (torchmetrics), and once for test after fit.
TRAINING_SCALAR = ("accuracy", "balanced_accuracy", "f1_weighted", "f1_macro", "auroc", "kappa")
TRAINING_PER_CLASS = ("precision", "recall")

# The metrics that can rank ensemble weighting schemes (log loss breaks their ties).
RANKING = tuple(name for name in SCALAR if name not in LOWER_IS_BETTER)

# What every summary leads with: the run summary's columns, the training log's test line, the scores
# a packaged model carries for the page. Weighted F1 first: it is the C-NMC challenge's metric.
HEADLINE = ("f1_weighted", "balanced_accuracy", "auroc", "kappa")
# What temperature scaling changes (lower is better).
CALIBRATION = ("log_loss", "ece")
# What every report shows: evaluation's table, the model card, the ensemble's comparison.
REPORTED = (*HEADLINE, "accuracy", *CALIBRATION)


def base_name(metric: str) -> str:
    """'val/recall_all' -> 'recall', 'val/f1_weighted_best' -> 'f1_weighted', 'kappa' -> 'kappa'."""
    name = metric.rsplit("/", 1)[-1].removesuffix("_best")
    if name in SCALAR or name == "loss":
        return name
    return next((per_class for per_class in PER_CLASS if name.startswith(f"{per_class}_")), name)


def higher_is_better(metric: str) -> bool:
    return base_name(metric) not in LOWER_IS_BETTER


def mode(metric: str) -> str:
    """'max' or 'min': what checkpointing, early stopping and sweepers should do with `metric`."""
    return "max" if higher_is_better(metric) else "min"


def regret(metric: str, values):
    """Values turned lower-is-better: the negated score for metrics where higher is better."""
    values = np.asarray(values, dtype=np.float64)
    return -values if higher_is_better(metric) else values


def metric_safe(name: str) -> str:
    """A class name as it may appear inside a metric name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def per_class_name(metric: str, class_name: str) -> str:
    return f"{metric}_{metric_safe(class_name)}"


def metric_names(class_names: Sequence[str], prefix: str = "", scalar: Sequence[str] = TRAINING_SCALAR,
                 per_class: Sequence[str] = TRAINING_PER_CLASS) -> list[str]:
    """Every name of these metrics for these classes: the scalars, then each per-class metric."""
    names = [f"{prefix}{name}" for name in scalar]
    return names + [f"{prefix}{per_class_name(name, c)}" for name in per_class for c in class_names]
