"""Choosing a scheme: the one-standard-error rule over paired fold scores, and the nested
estimate of the whole choice (allcls.ensemble.choice)."""

import numpy as np
import pytest

from allcls.ensemble.candidates import SplitPredictions
from allcls.ensemble.choice import choose, nested_estimate, paired_gap, ranked
from allcls.ensemble.cross_validation import SchemeResult, cross_validate, fold_indices
from allcls.ensemble.schemes import Scheme, build_schemes
from allcls.metrics.bootstrap import bootstrap_multiplicities


def result(name, family, fold_scores, rule="arithmetic"):
    scores = np.asarray(fold_scores, dtype=float)
    return SchemeResult(name, family, rule, np.ones(2) / 2, {"f1_weighted": float(scores.mean())},
                        float(scores.mean()), scores)


def test_a_lead_within_one_standard_error_goes_to_the_simplest_tied_scheme():
    results = ranked([
        result("greedy_caruana", "greedy", [0.92, 0.80, 0.95, 0.85, 0.93]),
        result("equal", "equal", [0.90, 0.83, 0.90, 0.86, 0.90]),  # behind by 0.012 +- 0.017: tied
        result("proportional:auroc", "proportional", [0.93, 0.79, 0.94, 0.86, 0.92]),
        result("majority_vote", "vote", [0.70, 0.60, 0.76, 0.66, 0.72], "vote"),  # 0.2 behind on every fold
    ], "f1_weighted")
    choice = choose(results, "f1_weighted")
    assert choice.leader.name == "greedy_caruana" and choice.chosen.name == "equal" and choice.tied == 3
    assert [r.tied for r in results] == [True, True, True, False] and [r.chosen for r in results].count(True) == 1
    assert "greedy_caruana leads" in choice.reason and "simplest of the 3 tied schemes, equal" in choice.reason


def test_a_lead_beyond_noise_keeps_the_best_scheme():
    results = ranked([result("equal", "equal", [0.80, 0.70, 0.85, 0.75, 0.80]),
                      result("min_log_loss", "log_loss", [0.90, 0.81, 0.94, 0.86, 0.91])], "f1_weighted")
    choice = choose(results, "f1_weighted")
    assert choice.chosen.name == "min_log_loss" and not results[1].tied
    assert "ahead of every other scheme by more than one standard error" in choice.reason


def test_the_comparison_is_paired_fold_by_fold():
    """Fold scores that vary a lot between folds but trail the leader by 0.01 on every one: unpaired,
    their spreads overlap; paired, the trail is far beyond its standard error."""
    leader = [0.95, 0.70, 0.85, 0.60, 0.90]
    results = ranked([result("greedy_caruana", "greedy", leader),
                      result("equal", "equal", np.array(leader) - [0.010, 0.011, 0.009, 0.010, 0.012])], "f1_weighted")
    gap, se = paired_gap(results[0].fold_scores, results[1].fold_scores)
    assert gap == pytest.approx(0.0104) and se < 0.001
    assert choose(results, "f1_weighted").chosen.name == "greedy_caruana"


def test_averaging_is_preferred_to_voting_among_schemes_that_fit_nothing():
    results = ranked([result("majority_vote", "vote", [0.91, 0.82, 0.90, 0.86, 0.90], "vote"),
                      result("equal", "equal", [0.90, 0.83, 0.90, 0.85, 0.89])], "f1_weighted")
    assert choose(results, "f1_weighted").chosen.name == "equal"


def test_folds_that_cannot_score_leave_the_noise_unmeasured_and_every_scheme_tied():
    assert paired_gap(np.array([0.9, np.nan]), np.array([0.5, np.nan])) == (pytest.approx(0.4), float("inf"))


def noise_split(models=12, samples=240, seed=2):
    """Members that know nothing: whatever a choice among them scores above chance is the choice's luck."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, samples)
    probs = rng.dirichlet([1, 1], size=(models, samples))
    subjects = np.array([f"S{i // 6}" for i in range(samples)], dtype=object)
    return SplitPredictions(np.array([f"{i}.bmp" for i in range(samples)], dtype=object), subjects, labels, probs)


def one_member(index):
    return lambda probs, labels: np.eye(probs.shape[0])[index]


def test_the_nested_estimate_scores_the_choice_not_the_winner():
    """Twelve schemes that each keep one member of no skill: the best cross-validated of them is the
    luckiest; the choice, scored where it was not made, is worth chance."""
    val = noise_split()
    schemes = [Scheme(f"member {i}", one_member(i), "arithmetic", "best_single") for i in range(12)]
    folds = fold_indices(val, 5, seed=0)
    chosen = choose(ranked([cross_validate(s, val, folds, "f1_weighted")[0] for s in schemes], "f1_weighted"),
                    "f1_weighted").chosen
    nested = nested_estimate(schemes, val, "f1_weighted", 5, 0, bootstrap_multiplicities(val.groups(), 200, 0))
    assert nested is not None and len(nested.picks) == 5 and set(nested.picks) <= {s.name for s in schemes}
    assert chosen.cv > 0.55 and abs(nested.score - 0.5) < (chosen.cv - 0.5) / 2, (chosen.cv, nested.score)
    assert nested.interval[0] < 0.5 < nested.interval[1]


def test_no_nested_estimate_when_an_outer_fold_leaves_too_few_subjects():
    val = noise_split(models=3, samples=40)
    val = SplitPredictions(val.sample_ids, np.array(["A", "B"] * 20, dtype=object), val.labels, val.probs)
    schemes = build_schemes({"equal": {}}, "f1_weighted", "arithmetic", 0, 3)
    assert nested_estimate(schemes, val, "f1_weighted", 2, 0, np.ones((0, 40))) is None
