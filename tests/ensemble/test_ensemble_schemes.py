"""Weighting schemes and their vectorised scoring, on hand-built predictions with known answers."""

import itertools
import math

import numpy as np
import pytest
from sklearn import metrics as sk

from allcls.ensemble.candidates import SplitPredictions
from allcls.ensemble.cross_validation import fold_indices, out_of_fold
from allcls.ensemble.schemes import (
    Scheme,
    SimplexGrid,
    best_single,
    build_schemes,
    equal,
    greedy,
    grid_members,
    min_log_loss,
    proportional,
    simplex_grid_points,
    top_k,
)
from allcls.ensemble.weight_search import score_weightings
from allcls.errors import AllclsError
from allcls.inference.combining import combine, predicted_classes
from allcls.metrics.bootstrap import bootstrap_multiplicities, interval
from allcls.metrics.vectorised import auroc, scores


def noisy_members(models=4, samples=300, classes=3, seed=0, skill=(0.5, 1.0, 1.5, 2.0)):
    """Members of increasing skill: logits are noise plus skill x the true class."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, samples)
    signal = np.asarray(skill)[:models, None, None] * np.eye(classes)[labels]
    logits = rng.normal(size=(models, samples, classes)) + signal
    probs = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    return probs, labels


# --- vectorised scoring equals scikit-learn --------------------------------------------------------

def test_batched_metrics_equal_scikit_learn_for_every_weighting():
    probs, labels = noisy_members()
    weightings = np.random.default_rng(1).dirichlet(np.ones(4), size=7)
    combined = combine(probs, weightings)
    batch = scores(combined, labels)
    for k in range(len(weightings)):
        predicted = combined[k].argmax(axis=1)
        assert batch["accuracy"][k] == pytest.approx(sk.accuracy_score(labels, predicted))
        assert batch["balanced_accuracy"][k] == pytest.approx(sk.balanced_accuracy_score(labels, predicted))
        assert batch["f1_weighted"][k] == pytest.approx(sk.f1_score(labels, predicted, average="weighted"))
        assert batch["f1_macro"][k] == pytest.approx(sk.f1_score(labels, predicted, average="macro"))
        assert batch["kappa"][k] == pytest.approx(sk.cohen_kappa_score(labels, predicted))
        assert batch["auroc"][k] == pytest.approx(sk.roc_auc_score(labels, combined[k], multi_class="ovr"))
        assert batch["log_loss"][k] == pytest.approx(sk.log_loss(labels, combined[k]))


def test_sample_weights_give_the_weighted_scores_of_scikit_learn():
    probs, labels = noisy_members(classes=2)
    combined = combine(probs, equal(probs, labels))
    weights = np.random.default_rng(2).integers(0, 3, size=(5, len(labels))).astype(float)
    batch = scores(combined[None], labels, sample_weight=weights)
    predicted = combined.argmax(axis=1)
    for b in range(5):
        w = weights[b]
        expected = sk.f1_score(labels, predicted, average="weighted", sample_weight=w)
        assert batch["f1_weighted"][b] == pytest.approx(expected)
        assert batch["kappa"][b] == pytest.approx(sk.cohen_kappa_score(labels, predicted, sample_weight=w))
        assert batch["auroc"][b] == pytest.approx(sk.roc_auc_score(labels, combined[:, 1], sample_weight=w))


def test_auroc_counts_ties_half():
    labels = np.array([0, 1, 0, 1])
    tied = np.array([[[0.5, 0.5]] * 4])
    assert auroc(tied, labels)[0] == pytest.approx(0.5)


def test_combine_rules():
    probs = np.array([[[0.9, 0.1], [0.4, 0.6]], [[0.6, 0.4], [0.2, 0.8]]])
    weights = np.array([0.25, 0.75])
    assert combine(probs, weights) == pytest.approx(0.25 * probs[0] + 0.75 * probs[1])
    geometric = np.exp(0.25 * np.log(probs[0]) + 0.75 * np.log(probs[1]))
    assert combine(probs, weights, "geometric") == pytest.approx(geometric / geometric.sum(axis=1, keepdims=True))
    votes = combine(probs, np.array([0.5, 0.5]), "vote")
    assert votes.argmax(axis=1).tolist() == [0, 1] and votes.sum(axis=1) == pytest.approx([1, 1])


# --- schemes with known answers ---------------------------------------------------------------------

def test_proportional_weights_are_the_normalised_member_metrics():
    probs, labels = noisy_members()
    accuracy = np.array([sk.accuracy_score(labels, p.argmax(axis=1)) for p in probs])
    assert proportional("accuracy")(probs, labels) == pytest.approx(accuracy / accuracy.sum())
    kappa = np.array([sk.cohen_kappa_score(labels, p.argmax(axis=1)) for p in probs])
    assert proportional("kappa", power=2)(probs, labels) == pytest.approx(kappa**2 / (kappa**2).sum())


def test_negative_kappa_gets_no_weight():
    probs, labels = noisy_members(models=3, skill=(1.5, 2.0, -2.0))
    weights = proportional("kappa")(probs, labels)
    assert weights[2] == 0 and weights.sum() == pytest.approx(1)


def test_greedy_gives_all_weight_to_a_member_that_is_always_right():
    probs, labels = noisy_members(models=4, skill=(0.5, 0.7, 0.6, 0.4))
    probs[2] = np.eye(3)[labels] * 0.9 + 0.1 / 3  # member 2 is always right
    weights = greedy("f1_weighted", "arithmetic", iterations=10, bags=10, bag_fraction=0.75, seed=0)(probs, labels)
    # in every bag that contains member 2 it takes all the weight; bags without it share the rest
    assert weights.argmax() == 2
    unbagged = greedy("f1_weighted", "arithmetic", iterations=10, bags=1, bag_fraction=1.0, seed=0)(probs, labels)
    assert unbagged == pytest.approx([0, 0, 1, 0])


def plain_greedy(probs, labels, rule, iterations):
    """Caruana's selection as a plain loop: add the member whose addition scores best by scikit-learn's
    F1, ties to the lowest log loss (then the first member)."""
    counts = np.zeros(len(probs))
    for _ in range(iterations):
        trials = []
        for member in range(len(probs)):
            combined = combine(probs, (counts + np.eye(len(probs))[member]) / (counts.sum() + 1), rule)
            trials.append((-sk.f1_score(labels, combined.argmax(axis=1), average="weighted"),
                           sk.log_loss(labels, np.clip(combined, 1e-12, 1), labels=range(probs.shape[2]))))
        best = min(trials, key=lambda t: t[0])[0]
        tied = [m for m, t in enumerate(trials) if np.isclose(t[0], best, rtol=0, atol=1e-12)]
        counts[min(tied, key=lambda m: trials[m][1])] += 1
    return counts / counts.sum()


@pytest.mark.parametrize("classes, rule", [(2, "arithmetic"), (3, "geometric"), (2, "vote")])
def test_greedy_steps_scored_in_batches_equal_a_plain_loop(classes, rule):
    """Every bag's steps scored in one batch equal each bag's plain loop (the bags drawn as the scheme draws them)."""
    probs, labels = noisy_members(models=5, samples=200, classes=classes, skill=(0.3, 0.5, 0.4, 0.6, 0.5))
    batched = greedy("f1_weighted", rule, iterations=8, bags=4, bag_fraction=0.6, seed=0)(probs, labels)
    rng, plain = np.random.default_rng(0), np.zeros(5)
    for bag in [np.sort(rng.choice(5, 3, replace=False)) for _ in range(4)]:
        plain[bag] += plain_greedy(probs[bag], labels, rule, 8) / 4
    assert batched == pytest.approx(plain)


def test_simplex_grid_has_every_weighting_of_the_step():
    grid = simplex_grid_points(5, 0.05)
    assert len(grid) == 10_626 == math.comb(24, 4)
    assert np.allclose(grid.sum(axis=1), 1) and (grid >= 0).all()
    assert len(np.unique(np.round(grid, 6), axis=0)) == len(grid)
    assert any(np.allclose(row, [0.1, 0.2, 0.3, 0.4, 0.0]) for row in grid)


def test_simplex_grid_finds_the_best_weighting_a_plain_loop_finds():
    probs, labels = noisy_members(models=3, skill=(1.0, 1.2, 0.8), samples=200)
    found = SimplexGrid("f1_weighted", 0.1, "arithmetic", 10_000).fit(probs, labels)
    brute = max(
        ((sk.f1_score(labels, np.tensordot(w, probs, 1).argmax(axis=1), average="weighted"), tuple(w))
         for w in simplex_grid_points(3, 0.1)), key=lambda item: item[0])
    chosen = np.tensordot(found, probs, 1).argmax(axis=1)
    assert sk.f1_score(labels, chosen, average="weighted") == pytest.approx(brute[0])


def plain_grid(probs, labels, grid):
    """The grid's best weighting as a plain loop: the best F1 by scikit-learn, ties to the lowest log
    loss (then the first weighting); and how many weightings tied."""
    f1 = np.array([sk.f1_score(labels, np.tensordot(w, probs, 1).argmax(axis=1), average="weighted") for w in grid])
    tied = np.flatnonzero(np.isclose(f1, f1.max(), rtol=0, atol=1e-12))
    losses = [sk.log_loss(labels, np.clip(np.tensordot(grid[i], probs, 1), 1e-12, 1), labels=[0, 1]) for i in tied]
    return grid[tied[np.argmin(losses)]], grid[tied[0]]


def test_the_grid_breaks_ties_by_the_lower_log_loss():
    """On a small validation set several weightings score the same F1: the grid takes the best
    calibrated of them, fitted on the whole set and without a held-out fold alike."""
    probs, labels = noisy_members(models=3, classes=2, samples=60, seed=1, skill=(1.0, 1.2, 0.8))
    search, grid = SimplexGrid("f1_weighted", 0.1, "arithmetic", 10_000), simplex_grid_points(3, 0.1)
    fold = np.arange(10)
    keep = np.setdiff1d(np.arange(len(labels)), fold)
    expected, first_tied = plain_grid(probs, labels, grid)
    assert not np.allclose(expected, first_tied)  # the tie is there, and the first tied weighting is not the answer
    assert search.fit(probs, labels) == pytest.approx(expected)
    per_fold = search.fit_folds(probs, labels, [fold, np.array([], dtype=np.int64)])
    assert per_fold[0] == pytest.approx(plain_grid(probs[:, keep], labels[keep], grid)[0])
    assert per_fold[1] == pytest.approx(expected)


def test_a_grid_too_big_for_its_budget_covers_the_best_members_it_can():
    probs, labels = noisy_members(models=4)  # skill increases with the index
    assert grid_members(4, 0.1, 66) == 3 and grid_members(4, 0.1, 65) == 2  # 3 members: C(12, 2) = 66
    weights = SimplexGrid("accuracy", 0.1, "arithmetic", 66).fit(probs, labels)
    assert weights[0] == 0 and weights.sum() == pytest.approx(1)
    names = [s.name for s in build_schemes({"simplex_grid": {"step": 0.1, "max_weightings": 66}}, "accuracy",
                                           "arithmetic", 0, members=4)]
    assert names == ["simplex_grid:0.1 (best 3 of 4 by accuracy)"]
    with pytest.raises(AllclsError, match="must divide 1"):
        simplex_grid_points(3, 0.3)


@pytest.mark.parametrize("models, classes, budget, metric", [(4, 2, 10_000, "f1_weighted"), (5, 3, 100, "kappa"),
                                                          (6, 2, 300, "accuracy")])
def test_the_grid_fitted_for_every_fold_in_one_pass_equals_fitting_each_fold(models, classes, budget, metric):
    probs, labels = noisy_members(models=models, classes=classes, skill=np.linspace(0.5, 2.0, models))
    held_out = np.array_split(np.random.default_rng(0).permutation(len(labels)), 5)
    search = SimplexGrid(metric, 0.1, "arithmetic", budget)
    everything = np.arange(len(labels))
    one_by_one = [search.fit(probs[:, keep], labels[keep]) for keep in (np.setdiff1d(everything, f) for f in held_out)]
    # a fold that holds nothing out is the whole set: cross-validation fits it in the same pass
    shared = search.fit_folds(probs, labels, [*held_out, np.array([], dtype=np.int64)])
    assert np.array_equal(np.array(shared), np.array([*one_by_one, search.fit(probs, labels)]))


def test_min_log_loss_beats_equal_weights_and_every_member():
    probs, labels = noisy_members()
    for rule in ("arithmetic", "geometric"):
        weights = min_log_loss(rule)(probs, labels)
        assert weights.sum() == pytest.approx(1) and (weights >= 0).all()
        loss = lambda w, rule=rule: scores(combine(probs, w[None], rule), labels, ("log_loss",))["log_loss"][0]  # noqa: E731
        assert loss(weights) <= loss(equal(probs, labels)) + 1e-9
        assert all(loss(weights) <= loss(np.eye(4)[m]) + 1e-9 for m in range(4))


def test_best_single_and_top_k_pick_the_best_members():
    probs, labels = noisy_members()  # skill increases with the index
    assert best_single("accuracy")(probs, labels) == pytest.approx([0, 0, 0, 1])
    assert top_k("accuracy", 2)(probs, labels) == pytest.approx([0, 0, 0.5, 0.5])


def test_schemes_are_built_from_the_config_and_can_be_switched_off():
    config = {"equal": {}, "proportional": {"metrics": ["kappa"], "powers": [1, 3]}, "majority_vote": None,
              "top_k": {"k": [2, 5]}, "simplex_grid": None}
    names = [s.name for s in build_schemes(config, "f1_weighted", "arithmetic", 0, members=4)]
    assert names == ["equal", "proportional:kappa", "proportional:kappa^3", "top_2:f1_weighted"]
    with pytest.raises(AllclsError, match="Unknown ensemble scheme"):
        build_schemes({"stacking": {}}, "f1_weighted", "arithmetic", 0, members=4)
    with pytest.raises(AllclsError, match="switched off"):
        build_schemes({"equal": None}, "f1_weighted", "arithmetic", 0, members=4)


def test_a_misspelt_scheme_setting_is_refused_naming_the_right_one():
    with pytest.raises(AllclsError, match=r"schemes.greedy.iteration is not a setting \(did you mean "
                                          r"schemes.greedy.iterations\?\)"):
        build_schemes({"greedy": {"iteration": 5}}, "f1_weighted", "arithmetic", 0, members=4)
    defaults = build_schemes({"proportional": {}}, "f1_weighted", "arithmetic", 0, members=4)
    assert [s.name for s in defaults] == [f"proportional:{m}" for m in ("accuracy", "f1_weighted", "auroc", "kappa")]


def test_top_k_breaks_ties_towards_the_later_member():
    probs, labels = noisy_members(models=3, skill=(0.5, 2.0, 2.0))
    probs[2] = probs[1]  # members 1 and 2 tie
    assert top_k("accuracy", 1)(probs, labels) == pytest.approx([0, 0, 1])


# --- honest selection ------------------------------------------------------------------------------

def split_with_subjects(probs, labels, per_subject=5):
    subjects = np.array([f"S{i // per_subject}" for i in range(len(labels))], dtype=object)
    ids = np.array([f"img{i}" for i in range(len(labels))], dtype=object)
    return SplitPredictions(ids, subjects, labels, probs)


def test_cv_folds_keep_each_subject_in_one_fold():
    probs, labels = noisy_members()
    val = split_with_subjects(probs, labels)
    folds = fold_indices(val, 5, seed=0)
    assert sorted(np.concatenate(folds)) == list(range(len(labels)))
    for a, b in itertools.combinations(folds, 2):
        assert not set(val.subjects[a]) & set(val.subjects[b])


def test_out_of_fold_predictions_never_see_their_own_fold():
    probs, labels = noisy_members(models=2, skill=(1.0, 1.0))
    val = split_with_subjects(probs, labels)
    folds = fold_indices(val, 3, seed=0)
    seen = []

    def spy(p, y):
        seen.append(len(y))
        return equal(p, y)

    out_of_fold(Scheme("spy", spy), val, folds)
    assert seen == [len(labels) - len(f) for f in folds]


def test_bootstrap_resamples_whole_subjects_and_the_interval_brackets_the_score():
    probs, labels = noisy_members()
    val = split_with_subjects(probs, labels)
    draws = bootstrap_multiplicities(val.groups(), 500, seed=0)
    assert (draws.sum(axis=1) == len(labels)).all()
    assert all(len(set(row[val.subjects == s])) == 1 for row in draws[:20] for s in set(val.subjects))
    combined = combine(probs, equal(probs, labels))
    point = scores(combined[None], labels, ("f1_weighted",))["f1_weighted"][0]
    low, high = interval(combined, labels, "f1_weighted", draws)
    assert low < point < high and high - low < 0.3


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("rule", ["arithmetic", "geometric", "vote"])
def test_fast_predicted_classes_agree_with_the_combined_probabilities(classes, rule):
    probs, labels = noisy_members(classes=classes)
    weightings = simplex_grid_points(4, 0.25)
    fast = predicted_classes(probs, weightings, rule)
    assert (fast == combine(probs, weightings, rule).argmax(axis=2)).all()
    assert score_weightings(probs, labels, weightings, "kappa", rule) == pytest.approx(
        scores(combine(probs, weightings, rule), labels, ("kappa",))["kappa"])
