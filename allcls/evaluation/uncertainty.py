"""Metrics with bootstrap 95% confidence intervals, resampled by subject (cells of one patient
are correlated, so resampling cells alone would give intervals that are too narrow), and the
per-subject accuracy table."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from allcls.models.metrics import metric_safe
from allcls.scoring import METRICS, bootstrap_multiplicities, confusion, per_class_metrics, resampling_groups, scores


def metric_table(probabilities: np.ndarray, labels: np.ndarray, subjects: Sequence, class_names: Sequence[str],
                 replicates: int, seed: int) -> pd.DataFrame:
    """One row per metric: value, and the 2.5 / 97.5 percentiles over bootstrap replicates.
    Per-class rows: precision, sensitivity (recall) and specificity of each class."""
    draws = bootstrap_multiplicities(resampling_groups(subjects), replicates, seed)
    point = scores(probabilities[None], labels)
    resampled = scores(probabilities[None], labels, sample_weight=draws) if replicates else None
    predicted = probabilities.argmax(axis=1)[None]
    classes = len(class_names)
    point_class = per_class_metrics(confusion(predicted, labels, classes))
    resampled_class = (per_class_metrics(confusion(np.broadcast_to(predicted, draws.shape), labels, classes, draws))
                       if replicates else None)
    present = np.bincount(labels, minlength=classes) > 0
    rows = []
    for name in METRICS:
        rows.append(_row(name, point[name][0], None if resampled is None else resampled[name]))
    for name, values in point_class.items():
        for c, class_name in enumerate(class_names):
            if name != "precision" and not present[c]:
                continue  # sensitivity and specificity of a class absent from the data are undefined
            rows.append(_row(f"{name}_{metric_safe(class_name)}", values[0, c],
                             None if resampled_class is None else resampled_class[name][:, c]))
    return pd.DataFrame(rows)


def _row(name: str, value: float, replicated: np.ndarray | None) -> dict:
    low, high = (np.nanpercentile(replicated, [2.5, 97.5]) if replicated is not None and np.isfinite(replicated).any()
                 else (np.nan, np.nan))
    return {"metric": name, "value": float(value), "ci_low": float(low), "ci_high": float(high)}


def per_subject_table(table: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """Accuracy per subject: cells, true class(es), accuracy, mean probability of the true class."""
    probabilities = table[[f"prob_{c}" for c in class_names]].to_numpy()
    labels = table["label"].to_numpy()
    frame = pd.DataFrame({
        "subject": table["subject"].fillna("(none)").astype(str),
        "true_class": [class_names[y] for y in labels],
        "correct": probabilities.argmax(axis=1) == labels,
        "p_true": probabilities[np.arange(len(labels)), labels],
    })
    grouped = frame.groupby("subject").agg(
        cells=("correct", "size"), true_class=("true_class", lambda v: ",".join(sorted(set(v)))),
        accuracy=("correct", "mean"), mean_p_true=("p_true", "mean"))
    return grouped.reset_index().sort_values(["accuracy", "subject"], ignore_index=True)
