"""How an ensemble's members are combined into one set of probabilities, for one weighting or for
many at once (a weight search scores thousands of weightings in one matrix product)."""

from __future__ import annotations

import numpy as np

from allcls.metrics.vectorised import EPS

RULES = ("arithmetic", "geometric", "vote")


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


def decision_base(probs: np.ndarray, rule: str = "arithmetic") -> np.ndarray:
    """What the rule sums over members before the argmax (models, samples, classes): a weighting's
    predicted classes are the argmax of its weighted sum of this, with no normalisation needed."""
    if rule == "vote":
        return np.eye(probs.shape[2])[probs.argmax(axis=2)] + 1e-6 * probs
    if rule == "geometric":
        return np.log(np.clip(probs, EPS, 1.0))
    return probs


def predicted_classes(probs: np.ndarray, weightings: np.ndarray, rule: str = "arithmetic") -> np.ndarray:
    """The class each weighting (K, models) predicts for each sample (K, N), as `combine` would,
    without forming normalised probabilities: argmax needs neither the normalisation nor, for
    the geometric mean, the exponential. Two classes reduce to the sign of one matrix product."""
    models, samples, classes = probs.shape
    base = decision_base(probs, rule)
    if classes == 2:
        return weightings @ (base[:, :, 1] - base[:, :, 0]) > 0  # bool: class 1 where True
    return (weightings @ base.reshape(models, -1)).reshape(len(weightings), samples, classes).argmax(axis=2)
