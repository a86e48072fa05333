"""Honest selection: every scheme is scored by cross-validation inside the validation set
(`allcls.ensemble.cross_validation`), with a bootstrap 95% confidence interval resampled by
subject; the one-standard-error rule chooses among the schemes within noise of the best, and a
nested cross-validation estimates what that choice is worth (`allcls.ensemble.choice`). The test
split is used once, to report the top schemes, the chosen one and the best single model side by side."""

from __future__ import annotations

from dataclasses import dataclass

from allcls.ensemble.candidates import Candidates
from allcls.ensemble.choice import Choice, NestedEstimate, choose, nested_estimate, ranked
from allcls.ensemble.cross_validation import SchemeResult, cross_validate, fold_indices, metrics_of
from allcls.ensemble.schemes import Scheme, best_single
from allcls.errors import AllclsError
from allcls.inference.combining import combine
from allcls.metrics.bootstrap import bootstrap_multiplicities, interval
from allcls.metrics.names import RANKING


@dataclass(frozen=True)
class Comparison:
    results: list[SchemeResult]  # ranked by cross-validated score
    single: SchemeResult  # the best single member, chosen on validation too
    choice: Choice
    nested: NestedEstimate | None  # None when switched off, or when validation has too few subjects


def evaluate_schemes(schemes: list[Scheme], members: Candidates, metric: str, cv_folds: int, bootstrap: int,
                     seed: int, report_top: int, nested: bool = True) -> Comparison:
    """Fit, cross-validate and rank every scheme on validation and choose one; estimate the choice
    by nested cross-validation (`nested`); score the top `report_top`, the chosen scheme and the best
    single member on test."""
    if metric not in RANKING:
        raise AllclsError(f"metric={metric!r} cannot rank schemes: use one of {list(RANKING)}.")
    val, test = members.val, members.test
    folds = fold_indices(val, cv_folds, seed)
    val_draws = bootstrap_multiplicities(val.groups(), bootstrap, seed)
    results = []
    for scheme in schemes:
        result, oof = cross_validate(scheme, val, folds, metric)
        result.cv_interval = interval(oof, val.labels, metric, val_draws)
        results.append(result)
    results = ranked(results, metric)
    choice = choose(results, metric)

    # Picking the best member is a choice made on validation too: cross-validated like a scheme.
    single, single_oof = cross_validate(Scheme("best single member", best_single(metric), "arithmetic", "member"),
                                        val, folds, metric)
    single.name = f"best single member: {members.names[int(single.weights.argmax())]}"
    single.cv_interval = interval(single_oof, val.labels, metric, val_draws)
    test_draws = bootstrap_multiplicities(test.groups(), bootstrap, seed + 1)
    on_test = [*results[:report_top], *([choice.chosen] if choice.chosen.rank > report_top else []), single]
    for result in on_test:
        combined = combine(test.probs, result.weights, result.rule)
        result.test = metrics_of(combined, test.labels)
        result.test_interval = interval(combined, test.labels, metric, test_draws)
    estimate = nested_estimate(schemes, val, metric, cv_folds, seed, val_draws) if nested else None
    return Comparison(results, single, choice, estimate)
