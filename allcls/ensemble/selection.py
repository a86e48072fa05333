"""Honest selection: weights tuned on validation overfit it, so every scheme is also scored by
cross-validation inside the validation set (weights fitted on k-1 folds, scored on the held-out
fold, folds grouped by subject), with a bootstrap 95% confidence interval resampled by subject.
Schemes are ranked by that cross-validated score; the test split is used once, to report the
top schemes and the best single model side by side."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from allcls.ensemble.candidates import Candidates, SplitPredictions
from allcls.ensemble.schemes import Scheme, best_single
from allcls.errors import AllclsError
from allcls.inference.combining import Rule, combine
from allcls.metrics.bootstrap import bootstrap_multiplicities, interval
from allcls.metrics.names import RANKING, REPORTED, regret
from allcls.metrics.vectorised import scores

log = logging.getLogger(__name__)



@dataclass
class SchemeResult:
    name: str
    family: str
    rule: Rule
    weights: np.ndarray  # fitted on the whole validation set
    val: dict[str, float]  # in-sample: optimistic for schemes that search
    cv: float  # cross-validated selection metric
    cv_interval: tuple[float, float]
    test: dict[str, float] = field(default_factory=dict)
    test_interval: tuple[float, float] | None = None
    rank: int = 0


def fold_indices(val: SplitPredictions, folds: int, seed: int) -> list[np.ndarray]:
    """Held-out indices of each fold: stratified by class, grouped by subject."""
    groups = val.groups()
    if len(set(groups)) < folds:
        raise AllclsError(f"cv_folds={folds} needs at least {folds} subjects (or samples) in the validation "
                          f"split; it has {len(set(groups))}. Lower cv_folds.")
    smallest = np.bincount(val.labels).min(initial=len(val.labels))
    if smallest < folds:
        log.warning("cv_folds=%d, but a class has only %d validation samples: some folds hold none of it, so the "
                    "cross-validated scores are noisier. Lower cv_folds or validate on more data.", folds, smallest)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # said once above, in words that name the setting
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return [held_out for _, held_out in splitter.split(np.zeros(len(groups)), val.labels, groups)]


def out_of_fold(scheme: Scheme, val: SplitPredictions, folds: list[np.ndarray]) -> np.ndarray:
    """Each validation sample predicted by weights fitted without its fold (samples, classes)."""
    combined = np.zeros(val.probs.shape[1:])
    for held_out, weights in zip(folds, scheme.weights_per_fold(val.probs, val.labels, folds), strict=True):
        combined[held_out] = combine(val.probs[:, held_out], weights, scheme.rule)
    return combined


def metrics_of(combined: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {name: float(value[0]) for name, value in scores(combined[None], labels, REPORTED).items()}


def evaluate_schemes(schemes: list[Scheme], members: Candidates, metric: str, cv_folds: int, bootstrap: int,
                     seed: int, report_top: int) -> tuple[list[SchemeResult], SchemeResult]:
    """Fit, cross-validate and rank every scheme on validation; score the top `report_top` and the
    best single member on test. Returns (ranked results, best single member)."""
    if metric not in RANKING:
        raise AllclsError(f"metric={metric!r} cannot rank schemes: use one of {list(RANKING)}.")
    val, test = members.val, members.test
    folds = fold_indices(val, cv_folds, seed)
    val_draws = bootstrap_multiplicities(val.groups(), bootstrap, seed)
    results = []
    for scheme in schemes:
        weights = scheme.fit(val.probs, val.labels)
        oof = out_of_fold(scheme, val, folds)
        cv_score = metrics_of(oof, val.labels)[metric]
        results.append(SchemeResult(scheme.name, scheme.family, scheme.rule, weights,
                                    metrics_of(combine(val.probs, weights, scheme.rule), val.labels),
                                    cv_score, interval(oof, val.labels, metric, val_draws)))
    results.sort(key=lambda r: (float(regret(metric, r.cv)), float(regret(metric, r.val[metric]))))
    for rank, result in enumerate(results, start=1):
        result.rank = rank

    chooser = Scheme("best single member", best_single(metric), "arithmetic", "member")
    single_weights = chooser.fit(val.probs, val.labels)
    single_oof = out_of_fold(chooser, val, folds)  # picking the best member is a choice made on validation too
    single = SchemeResult(f"best single member: {members.names[int(single_weights.argmax())]}", "member",
                          "arithmetic", single_weights, metrics_of(combine(val.probs, single_weights), val.labels),
                          metrics_of(single_oof, val.labels)[metric],
                          interval(single_oof, val.labels, metric, val_draws))
    test_draws = bootstrap_multiplicities(test.groups(), bootstrap, seed + 1)
    for result in [*results[:report_top], single]:
        combined = combine(test.probs, result.weights, result.rule)
        result.test = metrics_of(combined, test.labels)
        result.test_interval = interval(combined, test.labels, metric, test_draws)
    return results, single
