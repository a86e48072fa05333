"""How an ensemble's members are combined into one set of probabilities, for one weighting or for
many at once (a weight search scores thousands of weightings in one matrix product). The rule is
chosen by name once (`Rule`); each rule is one function of the members' probabilities."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import numpy as np

from allcls.errors import AllclsError
from allcls.metrics.vectorised import EPS

Rule = Literal["arithmetic", "geometric", "vote"]
RULES: tuple[Rule, ...] = get_args(Rule)


def _arithmetic(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """sum_m w_m p_m."""
    return weights @ probs.reshape(len(probs), -1)


def _geometric(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """softmax(sum_m w_m log p_m): the normalised weighted geometric mean."""
    models, samples, classes = probs.shape
    flat = (weights @ np.log(np.clip(probs, EPS, 1.0)).reshape(models, -1)).reshape(len(weights), samples, classes)
    return np.exp(flat - flat.max(axis=2, keepdims=True))


def _vote(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weighted share of each class among the members' predicted classes, ties broken by the
    arithmetic mean."""
    votes = np.eye(probs.shape[2])[probs.argmax(axis=2)]  # (models, samples, classes)
    return weights @ votes.reshape(len(probs), -1) + 1e-6 * _arithmetic(probs, weights)


COMBINE: dict[Rule, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "arithmetic": _arithmetic, "geometric": _geometric, "vote": _vote}


def check_rule(rule: str, where: str = "combine") -> Rule:
    if rule not in RULES:
        raise AllclsError(f"{where}={rule!r} is not a combining rule: use one of {list(RULES)}.")
    return rule


def combine(probs: np.ndarray, weights: np.ndarray, rule: Rule = "arithmetic") -> np.ndarray:
    """Ensemble probabilities for one weighting (models,) -> (samples, classes), or for a batch
    (K, models) -> (K, samples, classes). Rows sum to 1."""
    weights = np.asarray(weights, dtype=np.float64)
    single = weights.ndim == 1
    weights = np.atleast_2d(weights)
    _, samples, classes = probs.shape
    combined = COMBINE[check_rule(rule)](probs, weights).reshape(len(weights), samples, classes)
    combined = combined / combined.sum(axis=2, keepdims=True)
    return combined[0] if single else combined


def decision_base(probs: np.ndarray, rule: Rule = "arithmetic") -> np.ndarray:
    """What the rule sums over members before the argmax (models, samples, classes): a weighting's
    predicted classes are the argmax of its weighted sum of this, with no normalisation needed."""
    if rule == "vote":
        return np.eye(probs.shape[2])[probs.argmax(axis=2)] + 1e-6 * probs
    if rule == "geometric":
        return np.log(np.clip(probs, EPS, 1.0))
    return probs


def predicted_classes(probs: np.ndarray, weightings: np.ndarray, rule: Rule = "arithmetic") -> np.ndarray:
    """The class each weighting (K, models) predicts for each sample (K, N), as `combine` would,
    without forming normalised probabilities: argmax needs neither the normalisation nor, for
    the geometric mean, the exponential. Two classes reduce to the sign of one matrix product."""
    models, samples, classes = probs.shape
    base = decision_base(probs, rule)
    if classes == 2:
        # (contiguous: a product over a strided operand runs several times slower)
        return weightings @ np.ascontiguousarray(base[:, :, 1] - base[:, :, 0]) > 0  # bool: class 1 where True
    return (weightings @ base.reshape(models, -1)).reshape(len(weightings), samples, classes).argmax(axis=2)
