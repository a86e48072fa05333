"""Cross-validation inside the validation set: weights tuned on validation overfit it, so every
scheme is also scored on folds it was not fitted on (weights fitted on k-1 folds, scored on the
held-out fold, folds grouped by subject). The per-fold scores are kept: two schemes scored on the
same folds can be compared pairwise (`allcls.ensemble.choice`)."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from allcls.ensemble.candidates import SplitPredictions
from allcls.ensemble.schemes import Scheme
from allcls.errors import AllclsError
from allcls.inference.combining import Rule, combine
from allcls.metrics.names import REPORTED
from allcls.metrics.vectorised import scores

log = logging.getLogger(__name__)


@dataclass
class SchemeResult:
    name: str
    family: str
    rule: Rule
    weights: np.ndarray  # fitted on the whole validation set
    val: dict[str, float]  # in-sample: optimistic for schemes that search
    cv: float  # cross-validated selection metric, over the pooled out-of-fold predictions
    fold_scores: np.ndarray  # the selection metric on each held-out fold (NaN where a fold cannot score it)
    cv_interval: tuple[float, float] = (float("nan"), float("nan"))
    test: dict[str, float] = field(default_factory=dict)
    test_interval: tuple[float, float] | None = None
    rank: int = 0
    # Paired with the leader on the same folds (allcls.ensemble.choice): mean difference and its standard error.
    gap: float = 0.0
    gap_se: float = 0.0
    tied: bool = False  # within one standard error of the leader
    chosen: bool = False


def fold_indices(val: SplitPredictions, folds: int, seed: int, warn: bool = True) -> list[np.ndarray]:
    """Held-out indices of each fold: stratified by class, grouped by subject."""
    groups = val.groups()
    if len(set(groups)) < folds:
        raise AllclsError(f"cv_folds={folds} needs at least {folds} subjects (or samples) in the validation "
                          f"split; it has {len(set(groups))}. Lower cv_folds.")
    smallest = np.bincount(val.labels).min(initial=len(val.labels))
    if smallest < folds and warn:
        log.warning("cv_folds=%d, but a class has only %d validation samples: some folds hold none of it, so the "
                    "cross-validated scores are noisier. Lower cv_folds or validate on more data.", folds, smallest)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # said once above, in words that name the setting
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return [held_out for _, held_out in splitter.split(np.zeros(len(groups)), val.labels, groups)]


def out_of_fold(scheme: Scheme, val: SplitPredictions, folds: list[np.ndarray],
                fold_weights: list[np.ndarray] | None = None) -> np.ndarray:
    """Each validation sample predicted by weights fitted without its fold (samples, classes);
    `fold_weights`: those weights where they are already fitted."""
    if fold_weights is None:
        fold_weights = scheme.weights_per_fold(val.probs, val.labels, folds)
    combined = np.zeros(val.probs.shape[1:])
    for held_out, weights in zip(folds, fold_weights, strict=True):
        combined[held_out] = combine(val.probs[:, held_out], weights, scheme.rule)
    return combined


NOTHING_HELD_OUT = np.array([], dtype=np.int64)  # a "fold" whose weights are fitted on every sample


def metrics_of(combined: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {name: float(value[0]) for name, value in scores(combined[None], labels, REPORTED).items()}


def fold_scores(combined: np.ndarray, labels: np.ndarray, folds: list[np.ndarray], metric: str) -> np.ndarray:
    """`metric` of the out-of-fold predictions on each held-out fold (folds,)."""
    return np.array([scores(combined[None, held_out], labels[held_out], (metric,))[metric][0] for held_out in folds])


def cross_validate(scheme: Scheme, val: SplitPredictions, folds: list[np.ndarray], metric: str
                   ) -> tuple[SchemeResult, np.ndarray]:
    """The scheme fitted on all of validation, and scored out of fold: (its result, the
    out-of-fold probabilities)."""
    if scheme.fit_folds is not None:  # one shared pass: the whole set is a fold that holds nothing out
        *fold_weights, weights = scheme.fit_folds(val.probs, val.labels, [*folds, NOTHING_HELD_OUT])
        oof = out_of_fold(scheme, val, folds, fold_weights)
    else:
        weights = scheme.fit(val.probs, val.labels)
        oof = out_of_fold(scheme, val, folds)
    result = SchemeResult(scheme.name, scheme.family, scheme.rule, weights,
                          metrics_of(combine(val.probs, weights, scheme.rule), val.labels),
                          metrics_of(oof, val.labels)[metric], fold_scores(oof, val.labels, folds, metric))
    return result, oof
