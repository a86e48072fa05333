"""Bootstrap 95% confidence intervals that resample whole subjects: cells of one patient are
correlated, so resampling cells alone would give intervals that are too narrow. Replicates are
per-sample weights (how often each sample was drawn), scored by the vectorised metrics in blocks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from allcls.metrics.names import PER_CLASS, SCALAR, per_class_name
from allcls.metrics.vectorised import confusion, per_class_metrics, scores
from allcls.progress import progress

BLOCK = 100  # replicates scored at once: bounds memory, and moves the progress bar


def resampling_groups(subjects: Sequence | np.ndarray) -> np.ndarray:
    """Resampling units: the subject of each sample where known, else the sample itself."""
    return np.array([s if isinstance(s, str) and s else f"sample:{i}" for i, s in enumerate(subjects)], dtype=object)


def bootstrap_multiplicities(groups: np.ndarray, replicates: int, seed: int) -> np.ndarray:
    """(replicates, samples): how often each sample is drawn when whole groups (subjects) are
    resampled with replacement."""
    unique, inverse = np.unique(groups, return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(unique), np.full(len(unique), 1.0 / len(unique)), size=replicates)
    return draws[:, inverse].astype(np.float64)


def percentile_interval(replicated: np.ndarray | None) -> tuple[float, float]:
    """The 2.5 and 97.5 percentiles of replicated scores; NaN where there are none."""
    if replicated is None or not np.isfinite(replicated).any():
        return (float("nan"), float("nan"))
    low, high = np.nanpercentile(replicated, [2.5, 97.5])
    return float(low), float(high)


def interval(combined: np.ndarray, labels: np.ndarray, metric: str, multiplicities: np.ndarray) -> tuple[float, float]:
    """The 95% interval of one metric of probabilities (N, C) over the replicates given."""
    if len(multiplicities) == 0:
        return (float("nan"), float("nan"))
    return percentile_interval(scores(combined[None], labels, (metric,), sample_weight=multiplicities)[metric])


def metric_table(probabilities: np.ndarray, labels: np.ndarray, subjects: Sequence, class_names: Sequence[str],
                 replicates: int, seed: int) -> pd.DataFrame:
    """One row per metric (every scalar metric, then precision, recall and specificity of each
    class): value, and its interval over `replicates` subject-resampled replicates (0: no interval)."""
    classes = len(class_names)
    predicted = probabilities.argmax(axis=1)[None]
    point = scores(probabilities[None], labels)
    point_class = per_class_metrics(confusion(predicted, labels, classes))
    replicated, replicated_class = _replicate(probabilities, labels, subjects, classes, replicates, seed)
    present = np.bincount(labels, minlength=classes) > 0
    rows = []
    for name in SCALAR:
        rows.append(_row(name, point[name][0], replicated.get(name)))
    for name in PER_CLASS:
        for c, class_name in enumerate(class_names):
            if name != "precision" and not present[c]:
                continue  # recall and specificity of a class absent from the data are undefined
            rows.append(_row(per_class_name(name, class_name), point_class[name][0, c],
                             replicated_class[name][:, c] if replicates else None))
    return pd.DataFrame(rows)


def _replicate(probabilities, labels, subjects, classes: int, replicates: int, seed: int):
    """Every metric over each bootstrap replicate: ({metric: (B,)}, {per-class metric: (B, C)})."""
    if not replicates:
        return {}, {}
    draws = bootstrap_multiplicities(resampling_groups(subjects), replicates, seed)
    predicted = probabilities.argmax(axis=1)[None]
    blocks, class_blocks = [], []
    with progress(desc=f"Bootstrap ({replicates} replicates, resampling subjects)", total=replicates,
                  unit="replicate") as bar:
        for start in range(0, replicates, BLOCK):
            weights = draws[start:start + BLOCK]
            blocks.append(scores(probabilities[None], labels, sample_weight=weights))
            class_blocks.append(per_class_metrics(confusion(np.broadcast_to(predicted, weights.shape), labels,
                                                            classes, weights)))
            bar.update(len(weights))
    return ({name: np.concatenate([b[name] for b in blocks]) for name in SCALAR},
            {name: np.concatenate([b[name] for b in class_blocks]) for name in PER_CLASS})


def _row(name: str, value: float, replicated: np.ndarray | None) -> dict:
    low, high = percentile_interval(replicated)
    return {"metric": name, "value": float(value), "ci_low": low, "ci_high": high}
