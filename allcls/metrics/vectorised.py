"""Metrics of probability tables, vectorised: many ensemble weightings or bootstrap replicates are
scored at once.

`combined` is (K, samples, classes): K sets of probabilities (weightings, or one set broadcast
against K rows of per-sample weights). `scores` returns one value per set without a Python loop
over K. Definitions follow scikit-learn (zero_division=0; balanced accuracy averages recall over
the classes present); tests check every one against it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from allcls.metrics.names import PER_CLASS, SCALAR, TRAINING_PER_CLASS, TRAINING_SCALAR, per_class_name

CONFUSION_METRICS = ("accuracy", "balanced_accuracy", "f1_weighted", "f1_macro", "kappa")
ECE_BINS = 15
EPS = 1e-12


def confusion(predicted: np.ndarray, labels: np.ndarray, classes: int, sample_weight: np.ndarray | None = None
              ) -> np.ndarray:
    """Confusion matrices (K, true, predicted) of predictions (K, N), optionally with per-sample
    weights (K, N) or (N,). Counted per true class over its columns, so the work is a few passes over
    the predictions (no index arithmetic); one set of predictions with many weight rows (bootstrap
    replicates) is one matrix product."""
    labels = np.asarray(labels)
    columns = _class_columns(labels, classes)
    if sample_weight is not None:
        sample_weight = np.atleast_2d(sample_weight)
        if predicted.shape[0] == 1 or predicted.strides[0] == 0:  # one prediction row, many weightings
            pairs = np.zeros((len(labels), classes * classes))
            pairs[np.arange(len(labels)), labels * classes + predicted[0]] = 1.0
            return (sample_weight @ pairs).reshape(-1, classes, classes)
        sample_weight = np.broadcast_to(sample_weight, predicted.shape)
    K = max(predicted.shape[0], 1 if sample_weight is None else sample_weight.shape[0])
    counts = np.empty((K, classes, classes))
    for t, index in enumerate(columns):
        block = predicted[:, index]
        if classes == 2 and sample_weight is None:  # predictions are 0/1: one count gives both cells
            counts[:, t, 1] = np.count_nonzero(block, axis=1)
            counts[:, t, 0] = block.shape[1] - counts[:, t, 1]
            continue
        for p in range(classes):
            hit = block == p
            counts[:, t, p] = (np.count_nonzero(hit, axis=1) if sample_weight is None
                               else (hit * sample_weight[:, index]).sum(axis=1))
    return counts


def _class_columns(labels: np.ndarray, classes: int) -> list:
    """The columns of each true class: slices (views, no copy) when the samples are sorted by label."""
    if len(labels) < 2 or (labels[1:] >= labels[:-1]).all():
        edges = np.searchsorted(labels, np.arange(classes + 1))
        return [slice(edges[t], edges[t + 1]) for t in range(classes)]
    return [np.flatnonzero(labels == t) for t in range(classes)]


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def confusion_metrics(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """accuracy, balanced_accuracy, f1_weighted, f1_macro and kappa from confusion matrices (K, C, C)."""
    total = matrix.sum(axis=(1, 2))
    true_counts, predicted_counts = matrix.sum(axis=2), matrix.sum(axis=1)
    hits = np.diagonal(matrix, axis1=1, axis2=2)
    recall = _divide(hits, true_counts)
    precision = _divide(hits, predicted_counts)
    f1 = _divide(2 * precision * recall, precision + recall)
    present = true_counts > 0
    observed = _divide(hits.sum(axis=1), total)
    expected = _divide((true_counts * predicted_counts).sum(axis=1), total**2)
    return {
        "accuracy": observed,
        "balanced_accuracy": _divide((recall * present).sum(axis=1), present.sum(axis=1).astype(np.float64)),
        "f1_weighted": _divide((f1 * true_counts).sum(axis=1), total),
        "f1_macro": f1.mean(axis=1),
        "kappa": np.where(expected < 1, _divide(observed - expected, 1 - expected), 0.0),
    }


def per_class_metrics(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """precision, recall (sensitivity) and specificity of each class (K, C), one-vs-rest."""
    total = matrix.sum(axis=(1, 2))[:, None]
    hits = np.diagonal(matrix, axis1=1, axis2=2)
    true_counts, predicted_counts = matrix.sum(axis=2), matrix.sum(axis=1)
    true_negatives = total - true_counts - predicted_counts + hits
    return {
        "precision": _divide(hits, predicted_counts),
        "recall": _divide(hits, true_counts),
        "specificity": _divide(true_negatives, total - true_counts),
    }


def expected_calibration_error(combined: np.ndarray, labels: np.ndarray, sample_weight: np.ndarray | None = None,
                               bins: int = ECE_BINS) -> np.ndarray:
    """Top-label ECE (K,): the weighted mean gap between confidence and accuracy over equal-width
    confidence bins."""
    K, N, _ = combined.shape
    confidence = combined.max(axis=2)
    correct = (combined.argmax(axis=2) == labels[None, :]).astype(np.float64)
    weight = np.ones((K, N)) if sample_weight is None else np.broadcast_to(sample_weight, (K, N)).astype(np.float64)
    index = (np.arange(K)[:, None] * bins + np.minimum((confidence * bins).astype(np.int64), bins - 1)).ravel()
    count = np.bincount(index, weight.ravel(), K * bins).reshape(K, bins)
    hits = np.bincount(index, (weight * correct).ravel(), K * bins).reshape(K, bins)
    sure = np.bincount(index, (weight * confidence).ravel(), K * bins).reshape(K, bins)
    return _divide(np.abs(hits - sure).sum(axis=1), count.sum(axis=1))


def auroc(combined: np.ndarray, labels: np.ndarray, sample_weight: np.ndarray | None = None) -> np.ndarray:
    """Macro one-vs-rest ROC AUC (K,) of probabilities (K, N, C), ties counted half, with optional
    per-sample weights (K, N). Rows are sorted together by offsetting each row's scores."""
    K, N, C = combined.shape
    weight = np.ones((K, N)) if sample_weight is None else np.broadcast_to(sample_weight, (K, N)).astype(np.float64)
    offset = (np.arange(K) * 4.0)[:, None]  # scores lie in [0, 1]: rows never overlap
    per_class = []
    for c in range(C):
        positive = labels == c
        if positive.all() or not positive.any():
            continue
        shifted = combined[:, :, c] + offset
        negatives, negative_weight = shifted[:, ~positive].ravel(), weight[:, ~positive].ravel()
        order = np.argsort(negatives, kind="stable")
        negatives, cumulative = negatives[order], np.concatenate([[0.0], np.cumsum(negative_weight[order])])
        positives = shifted[:, positive]
        below = cumulative[np.searchsorted(negatives, positives, side="left")]
        upto = cumulative[np.searchsorted(negatives, positives, side="right")]
        # subtract what the rows before this one contributed
        row_start = cumulative[np.searchsorted(negatives, offset[:, 0], side="left")][:, None]
        wins = (below - row_start) + 0.5 * (upto - below)
        positive_weight = weight[:, positive]
        total_negative = weight[:, ~positive].sum(axis=1)
        per_class.append(_divide((wins * positive_weight).sum(axis=1), positive_weight.sum(axis=1) * total_negative))
    return np.mean(per_class, axis=0) if per_class else np.full(K, np.nan)


def log_loss(combined: np.ndarray, labels: np.ndarray, sample_weight: np.ndarray | None = None) -> np.ndarray:
    K, N, _ = combined.shape
    picked = -np.log(np.clip(combined[:, np.arange(N), labels], EPS, 1.0))
    if sample_weight is None:
        return picked.mean(axis=1)
    weight = np.broadcast_to(sample_weight, (K, N))
    return _divide((picked * weight).sum(axis=1), weight.sum(axis=1))


def scores(combined: np.ndarray, labels: np.ndarray, metrics: Sequence[str] = SCALAR,
           sample_weight: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The named metrics of probabilities (K, N, C) -> {metric: (K,)}.

    `sample_weight` (K, N) weights the samples, e.g. bootstrap multiplicities; one set of
    probabilities (1, N, C) with B weight rows gives B scores.
    """
    unknown = set(metrics) - set(SCALAR)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}")
    if sample_weight is not None:
        sample_weight = np.atleast_2d(sample_weight)
        rows = max(combined.shape[0], sample_weight.shape[0])
        combined = np.broadcast_to(combined, (rows, *combined.shape[1:]))
        sample_weight = np.broadcast_to(sample_weight, combined.shape[:2])
    C = combined.shape[2]
    result: dict[str, np.ndarray] = {}
    if set(metrics) & set(CONFUSION_METRICS):
        # argmax of the rows that differ: a broadcast row (bootstrap replicates) is one row of predictions
        predicted = combined[:1].argmax(axis=2) if combined.strides[0] == 0 else combined.argmax(axis=2)
        result.update(confusion_metrics(confusion(predicted, labels, C, sample_weight)))
    if "auroc" in metrics:
        result["auroc"] = auroc(combined, labels, sample_weight)
    if "log_loss" in metrics:
        result["log_loss"] = log_loss(combined, labels, sample_weight)
    if "ece" in metrics:
        result["ece"] = expected_calibration_error(combined, labels, sample_weight)
    return {name: result[name] for name in metrics}


def table_scores(probabilities: np.ndarray, labels: np.ndarray, class_names: Sequence[str], prefix: str = "",
                 scalar: Sequence[str] = TRAINING_SCALAR, per_class: Sequence[str] = TRAINING_PER_CLASS
                 ) -> dict[str, float]:
    """The named metrics of one table of probabilities (N, C), flat and named as they are logged:
    {'test/f1_weighted': ..., 'test/recall_all': ...}."""
    unknown = set(per_class) - set(PER_CLASS)
    if unknown:
        raise ValueError(f"unknown per-class metrics {sorted(unknown)}")
    flat = {f"{prefix}{name}": float(value[0]) for name, value in scores(probabilities[None], labels, scalar).items()}
    by_class = per_class_metrics(confusion(probabilities.argmax(axis=1)[None], labels, len(class_names)))
    for name in per_class:
        for c, class_name in enumerate(class_names):
            flat[f"{prefix}{per_class_name(name, class_name)}"] = float(by_class[name][0, c])
    return flat


def confusion_frame(probabilities: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """Counts, true class in rows and predicted class in columns. The rows' column is named, so a
    CSV of it (and the MLflow UI's preview of that CSV) says which row is which true class."""
    matrix = confusion(probabilities.argmax(axis=1)[None], labels, len(class_names))[0].astype(np.int64)
    index = pd.Index([f"true_{c}" for c in class_names], name="true \\ predicted")
    return pd.DataFrame(matrix, index=index, columns=[f"pred_{c}" for c in class_names])
