"""Scoring many weightings of the members at once, and picking the best of them."""

from __future__ import annotations

import numpy as np

from allcls.ensemble.combining import combine, predicted_classes
from allcls.metrics.names import regret
from allcls.metrics.vectorised import CONFUSION_METRICS, confusion, confusion_metrics, scores

CHUNK_ELEMENTS = 8_000_000  # weightings are scored in chunks of about this many probabilities


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
    errors = regret(metric, score_weightings(probs, labels, weightings, metric, rule))
    tied = np.flatnonzero(np.isclose(errors, errors.min(), rtol=0, atol=1e-12))
    if len(tied) == 1:
        return int(tied[0])
    return int(tied[np.argmin(score_weightings(probs, labels, weightings[tied], "log_loss", rule))])
