"""Choosing a scheme honestly, and estimating what the choice is worth.

The scheme with the best cross-validated score often leads by less than the noise of the estimate.
The one-standard-error rule (Hastie, Tibshirani & Friedman, The Elements of Statistical Learning,
sec. 7.10; scikit-learn's example "Balance model complexity and cross-validated score") turns that
into a choice: each scheme is compared with the leader on the same folds (paired: the difference
fold by fold, its mean and standard error), those within one standard error are tied with it, and
the simplest of the tied is chosen.

The chosen scheme's own cross-validated score is biased upwards by the choice itself (it won
because it scored high on these folds). `nested_estimate` scores the whole procedure instead:
each outer fold of validation is predicted by the scheme that the same procedure chose on the
other folds alone (nested cross-validation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from allcls.ensemble.candidates import SplitPredictions
from allcls.ensemble.cross_validation import SchemeResult, cross_validate, fold_indices, metrics_of
from allcls.ensemble.schemes import Scheme
from allcls.inference.combining import combine
from allcls.metrics.bootstrap import interval
from allcls.metrics.names import regret

# Among tied schemes, the first here is chosen: what is fitted on validation first (nothing, then one
# weight per member from its own score, then a choice of members, then weights searched), and of the
# schemes that fit nothing, averaging before voting (its output is a probability that the referral
# rule and prediction sets can use; a vote's share of members is not one).
PREFERENCE = ("equal", "vote", "proportional", "best_single", "top_k", "log_loss", "greedy", "simplex_grid")
RULE = "one standard error (paired over the folds), simplest of the tied"


@dataclass(frozen=True)
class Choice:
    chosen: SchemeResult
    leader: SchemeResult
    tied: int  # schemes within one standard error of the leader, the leader included
    reason: str  # one sentence, for the terminal and the run


@dataclass(frozen=True)
class NestedEstimate:
    """The selection procedure's score on folds it never saw: choose on the inner folds, score on the outer."""

    score: float
    interval: tuple[float, float]
    picks: tuple[str, ...]  # the scheme chosen in each outer fold

    def picks_text(self) -> str:
        counts = {name: self.picks.count(name) for name in dict.fromkeys(self.picks)}
        return ", ".join(f"{name} in {n} of {len(self.picks)}" for name, n in counts.items())


def ranked(results: list[SchemeResult], metric: str) -> list[SchemeResult]:
    """Best cross-validated score first (in-sample validation breaks ties); ranks set from 1."""
    results = sorted(results, key=lambda r: (float(regret(metric, r.cv)), float(regret(metric, r.val[metric]))))
    for rank, result in enumerate(results, start=1):
        result.rank = rank
    return results


def paired_gap(leader: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """How far `other` trails the leader over the same folds: the mean difference and its standard
    error (infinite where fewer than two folds can score both: no measure of the noise)."""
    differences = leader - other
    differences = differences[np.isfinite(differences)]
    if len(differences) < 2:
        return (float(differences.mean()) if len(differences) else 0.0, float("inf"))
    return float(differences.mean()), float(differences.std(ddof=1) / np.sqrt(len(differences)))


def simplicity(result: SchemeResult) -> int:
    return PREFERENCE.index(result.family) if result.family in PREFERENCE else len(PREFERENCE)


def choose(results: list[SchemeResult], metric: str) -> Choice:
    """The one-standard-error rule over ranked results; marks each result's gap, tie and the choice."""
    leader = results[0]
    for result in results:
        result.gap, result.gap_se = paired_gap(leader.fold_scores, result.fold_scores)
        result.tied = result.gap <= result.gap_se
        result.chosen = False
    tied = [r for r in results if r.tied]
    chosen = min(tied, key=lambda r: (simplicity(r), r.rank))
    chosen.chosen = True
    folds = len(leader.fold_scores)
    if chosen is not leader:
        reason = (f"{leader.name} leads on cross-validated {metric} by {chosen.gap:.3f} ± {chosen.gap_se:.3f} "
                  f"(paired over {folds} folds), within one standard error: the simplest of the {len(tied)} "
                  f"tied schemes, {chosen.name}, is chosen.")
    elif len(tied) > 1:
        reason = (f"{leader.name} has the best cross-validated {metric}; {len(tied) - 1} other scheme(s) are within "
                  f"one standard error of it (paired over {folds} folds), and it is the simplest of them.")
    else:
        reason = (f"{leader.name} has the best cross-validated {metric}, ahead of every other scheme by more than "
                  f"one standard error (paired over {folds} folds).")
    return Choice(chosen, leader, len(tied), reason)


def nested_estimate(schemes: list[Scheme], val: SplitPredictions, metric: str, folds: int, seed: int,
                    draws: np.ndarray) -> NestedEstimate | None:
    """The whole selection (cross-validate every scheme, apply the rule, fit the choice) run on all
    outer folds but one and scored on that one, for each outer fold in turn; with a bootstrap interval
    over `draws`. None where an outer fold leaves fewer than two subjects to cross-validate on."""
    everything = np.arange(len(val.labels))
    combined = np.zeros(val.probs.shape[1:])
    picks = []
    for held_out in fold_indices(val, folds, seed + 1, warn=False):
        inner = val.subset(np.setdiff1d(everything, held_out))
        inner_folds = min(folds, len(set(inner.groups())))
        if inner_folds < 2:
            return None
        splits = fold_indices(inner, inner_folds, seed, warn=False)
        chosen = choose(ranked([cross_validate(s, inner, splits, metric)[0] for s in schemes], metric), metric).chosen
        combined[held_out] = combine(val.probs[:, held_out], chosen.weights, chosen.rule)
        picks.append(chosen.name)
    return NestedEstimate(metrics_of(combined, val.labels)[metric], interval(combined, val.labels, metric, draws),
                          tuple(picks))
