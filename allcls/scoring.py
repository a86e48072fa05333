"""Metrics of probability tables, vectorised: many ensemble weightings or bootstrap replicates
scored at once, and the combination of several models' probabilities.

Everything here works on whole arrays: `probs` is (models, samples, classes), a batch of weightings
is (K, models), and `scores` returns one value per weighting (or per bootstrap replicate, given
per-sample weights) without a Python loop over K. Metric definitions follow scikit-learn
(zero_division=0; balanced accuracy averages recall over the classes present).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

COMBINE_RULES = ("arithmetic", "geometric", "vote")
METRICS = ("accuracy", "balanced_accuracy", "f1_weighted", "f1_macro", "kappa", "auroc", "log_loss", "ece")
HIGHER_IS_BETTER = {name: name not in ("log_loss", "ece") for name in METRICS}
CONFUSION_METRICS = ("accuracy", "balanced_accuracy", "f1_weighted", "f1_macro", "kappa")
PER_CLASS = ("precision", "sensitivity", "specificity")
ECE_BINS = 15
EPS = 1e-12
CHUNK_ELEMENTS = 8_000_000  # weightings are scored in chunks of about this many probabilities


def combine(probs: np.ndarray, weights: np.ndarray, rule: str = "arithmetic") -> np.ndarray:
    """Ensemble probabilities for one weighting (models,) -> (samples, classes), or for a batch
    (K, models) -> (K, samples, classes). Rows sum to 1.

    arithmetic: sum_m w_m p_m. geometric: softmax(sum_m w_m log p_m), the normalised weighted
    geometric mean. vote: weighted share of each class among the members' predicted classes,
    with ties broken by the arithmetic mean.
    """
    weights = np.asarray(weights, dtype=np.float64)
    single = weights.ndim == 1
    weights = np.atleast_2d(weights)
    models, samples, classes = probs.shape
    if rule == "arithmetic":
        flat = weights @ probs.reshape(models, -1)
    elif rule == "geometric":
        flat = weights @ np.log(np.clip(probs, EPS, 1.0)).reshape(models, -1)
        flat = flat.reshape(len(weights), samples, classes)
        flat = np.exp(flat - flat.max(axis=2, keepdims=True))
    elif rule == "vote":
        votes = np.eye(classes)[probs.argmax(axis=2)]  # (models, samples, classes)
        flat = weights @ votes.reshape(models, -1) + 1e-6 * (weights @ probs.reshape(models, -1))
    else:
        raise ValueError(f"unknown combine rule {rule!r}")
    combined = flat.reshape(len(weights), samples, classes)
    combined = combined / combined.sum(axis=2, keepdims=True)
    return combined[0] if single else combined


def confusion(predicted: np.ndarray, labels: np.ndarray, classes: int, sample_weight: np.ndarray | None = None
              ) -> np.ndarray:
    """Confusion matrices (K, true, predicted) for predictions (K, N), in one bincount."""
    K = predicted.shape[0]
    index = (np.arange(K)[:, None] * classes + labels[None, :]) * classes + predicted
    weights = None if sample_weight is None else np.broadcast_to(sample_weight, predicted.shape).ravel()
    counts = np.bincount(index.ravel(), weights=weights, minlength=K * classes * classes)
    return counts.reshape(K, classes, classes).astype(np.float64)


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
    """precision, sensitivity (recall) and specificity of each class (K, C), one-vs-rest."""
    total = matrix.sum(axis=(1, 2))[:, None]
    hits = np.diagonal(matrix, axis1=1, axis2=2)
    true_counts, predicted_counts = matrix.sum(axis=2), matrix.sum(axis=1)
    true_negatives = total - true_counts - predicted_counts + hits
    return {
        "precision": _divide(hits, predicted_counts),
        "sensitivity": _divide(hits, true_counts),
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
        scores = combined[:, :, c] + offset
        negatives, negative_weight = scores[:, ~positive].ravel(), weight[:, ~positive].ravel()
        order = np.argsort(negatives, kind="stable")
        negatives, cumulative = negatives[order], np.concatenate([[0.0], np.cumsum(negative_weight[order])])
        positives = scores[:, positive]
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


def scores(combined: np.ndarray, labels: np.ndarray, metrics: tuple[str, ...] = METRICS,
           sample_weight: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The named metrics of ensemble probabilities (K, N, C) -> {metric: (K,)}.

    `sample_weight` (K, N) weights the samples, e.g. bootstrap multiplicities; one set of
    probabilities (1, N, C) with B weight rows gives B scores.
    """
    unknown = set(metrics) - set(METRICS)
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
        result.update(confusion_metrics(confusion(combined.argmax(axis=2), labels, C, sample_weight)))
    if "auroc" in metrics:
        result["auroc"] = auroc(combined, labels, sample_weight)
    if "log_loss" in metrics:
        result["log_loss"] = log_loss(combined, labels, sample_weight)
    if "ece" in metrics:
        result["ece"] = expected_calibration_error(combined, labels, sample_weight)
    return {name: result[name] for name in metrics}


def predicted_classes(probs: np.ndarray, weightings: np.ndarray, rule: str = "arithmetic") -> np.ndarray:
    """The class each weighting (K, models) predicts for each sample (K, N), as `combine` would,
    without forming normalised probabilities: argmax needs neither the normalisation nor, for
    the geometric mean, the exponential. Two classes reduce to the sign of one matrix product."""
    models, samples, classes = probs.shape
    if rule == "vote":
        base = np.eye(classes)[probs.argmax(axis=2)] + 1e-6 * probs
    elif rule == "geometric":
        base = np.log(np.clip(probs, EPS, 1.0))
    else:
        base = probs
    if classes == 2:
        return (weightings @ (base[:, :, 1] - base[:, :, 0]) > 0).astype(np.int64)
    return (weightings @ base.reshape(models, -1)).reshape(len(weightings), samples, classes).argmax(axis=2)



def score_weightings(probs: np.ndarray, labels: np.ndarray, weightings: np.ndarray, metric: str,
                     rule: str = "arithmetic") -> np.ndarray:
    """One metric for each of many weightings (K, models) -> (K,), in memory-bounded chunks."""
    per_weighting = probs.shape[1] * probs.shape[2]
    chunk = max(1, CHUNK_ELEMENTS // per_weighting)
    parts = []
    for start in range(0, len(weightings), chunk):
        block = weightings[start:start + chunk]
        if metric in CONFUSION_METRICS:
            matrices = confusion(predicted_classes(probs, block, rule), labels, probs.shape[2])
            parts.append(confusion_metrics(matrices)[metric])
        else:
            parts.append(scores(combine(probs, block, rule), labels, (metric,))[metric])
    return np.concatenate(parts)


def best_weighting(probs: np.ndarray, labels: np.ndarray, weightings: np.ndarray, metric: str,
                   rule: str = "arithmetic") -> int:
    """Index of the weighting with the best `metric`; ties (common for accuracy-like metrics on
    small sets) go to the lowest log loss: the best calibrated of the equally good."""
    values = score_weightings(probs, labels, weightings, metric, rule)
    target = values.max() if HIGHER_IS_BETTER[metric] else values.min()
    tied = np.flatnonzero(np.isclose(values, target, rtol=0, atol=1e-12))
    if len(tied) == 1:
        return int(tied[0])
    return int(tied[np.argmin(score_weightings(probs, labels, weightings[tied], "log_loss", rule))])


def better(metric: str) -> Callable[[np.ndarray], int]:
    """argmax for metrics where higher is better, argmin for log loss."""
    return np.argmax if HIGHER_IS_BETTER[metric] else np.argmin


def resampling_groups(subjects: Sequence) -> np.ndarray:
    """Resampling units: the subject of each sample where known, else the sample itself."""
    return np.array([s if isinstance(s, str) and s else f"sample:{i}" for i, s in enumerate(subjects)], dtype=object)


def bootstrap_multiplicities(groups: np.ndarray, replicates: int, seed: int) -> np.ndarray:
    """(replicates, samples): how often each sample is drawn when whole groups (subjects) are
    resampled with replacement. Cells of one patient are correlated; resampling them together
    gives honest intervals."""
    unique, inverse = np.unique(groups, return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(unique), np.full(len(unique), 1.0 / len(unique)), size=replicates)
    return draws[:, inverse].astype(np.float64)


def interval(combined: np.ndarray, labels: np.ndarray, metric: str, multiplicities: np.ndarray) -> tuple[float, float]:
    if len(multiplicities) == 0:
        return (float("nan"), float("nan"))
    replicated = scores(combined[None], labels, (metric,), sample_weight=multiplicities)[metric]
    low, high = np.nanpercentile(replicated, [2.5, 97.5])
    return float(low), float(high)
