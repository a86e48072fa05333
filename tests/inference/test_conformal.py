"""Prediction sets that hold the true class with a chosen probability (split conformal, least ambiguous sets),
fitted on validation with each subject counted once; the referral they imply."""

import numpy as np
import pandas as pd
import pytest

from allcls.inference import conformal

from helpers import compose_config


def exchangeable(samples, classes=4, seed=0):
    """Calibrated predictions: each label drawn from its own predicted probabilities."""
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet(np.full(classes, 0.6), samples)
    labels = np.array([rng.choice(classes, p=p) for p in probabilities])
    subjects = [f"S{i // 5}" for i in range(samples)]
    return probabilities, labels, subjects


@pytest.mark.parametrize("coverage", [0.8, 0.9, 0.95])
def test_measured_coverage_is_within_a_few_points_of_the_target(coverage):
    probabilities, labels, subjects = exchangeable(4000)
    threshold = conformal.fit_threshold(probabilities[:2000], labels[:2000], subjects[:2000], coverage)
    members = conformal.prediction_sets(probabilities[2000:], threshold)
    measured = members[np.arange(2000), labels[2000:]].mean()
    assert coverage - 0.02 <= measured <= coverage + 0.03


def test_sets_grow_with_the_coverage_asked_for_and_hold_every_class_probable_enough():
    probabilities, labels, subjects = exchangeable(1000)
    sizes = [conformal.prediction_sets(probabilities, conformal.fit_threshold(probabilities, labels, subjects, c))
             .sum(axis=1).mean() for c in (0.6, 0.8, 0.95)]
    assert sizes[0] < sizes[1] < sizes[2]
    members = conformal.prediction_sets(np.array([[0.5, 0.3, 0.2], [0.1, 0.85, 0.05], [0.4, 0.35, 0.25]]), 0.7)
    assert members.tolist() == [[True, True, False], [False, True, False], [True, True, False]]
    empty = conformal.prediction_sets(np.array([[0.6, 0.4]]), np.array([0.1, 0.1]))
    assert empty.tolist() == [[False, False]] and conformal.referred(empty).tolist() == [True]  # never filled


def test_two_classes_get_informative_sets_an_uncertain_cell_both_a_clear_one_its_own():
    members = conformal.prediction_sets(np.array([[0.9, 0.1], [0.55, 0.45], [0.2, 0.8]]), 0.6)
    assert members.tolist() == [[True, False], [True, True], [False, True]]
    assert conformal.set_labels(members, ["hem", "all"]) == ["hem", "hem|all", "all"]


def test_each_validation_subject_counts_once():
    assert conformal.subject_weights(["S1", "S1", "S1", "S2", None, ""]).tolist() == [1 / 3, 1 / 3, 1 / 3, 1, 1, 1]


def test_too_few_validation_subjects_for_the_coverage_gives_no_threshold():
    probabilities, labels, _ = exchangeable(40)
    assert conformal.units_needed(0.95) == 20
    assert conformal.fit_threshold(probabilities, labels, ["S1"] * 20 + ["S2"] * 20, 0.95) is None
    assert conformal.fit_threshold(probabilities, labels, [None] * 40, 0.95) is not None  # 40 cells, no subjects


def test_evaluation_reports_coverage_set_size_and_referrals(store, tmp_path):
    from allcls.evaluation.task import evaluate

    overrides = [f"run_id={store['members'][0]}", "bootstrap=100", "num_workers=0", "conformal.coverage=0.7",
                 "ood.probes=false"]
    evaluate(compose_config("evaluate", store["root"], overrides, output_dir=tmp_path / "eval"))
    client = store["client"]
    run = client.search_runs([store["experiment_id"]], "tags.stage = 'evaluate'",
                             order_by=["attributes.start_time DESC"])[0]
    metrics = run.data.metrics
    assert metrics["conformal/target_coverage"] == pytest.approx(0.7)
    assert metrics["test/conformal/coverage_ci_low"] <= metrics["test/conformal/coverage"] <= 1
    # The set size, coverage and refer rate are those of the cells' logged decisions, recounted here
    logged = client.download_artifacts(run.info.run_id, "predictions/test_decisions.csv", str(tmp_path))
    decisions = pd.read_csv(logged, keep_default_na=False)
    sets = [[c for c in str(s).split("|") if c] for s in decisions["set"]]
    assert metrics["test/conformal/mean_set_size"] == pytest.approx(np.mean([len(s) for s in sets]))
    assert metrics["test/conformal/coverage"] == pytest.approx(np.mean([t in s for t, s in zip(decisions["true"], sets,
                                                                                               strict=True)]))
    assert metrics["test/conformal/refer_rate"] == pytest.approx(np.mean([len(s) != 1 for s in sets]))
    for name in ("hem", "all"):  # coverage per class, with its interval
        assert metrics[f"test/conformal/coverage_{name}_ci_low"] <= metrics[f"test/conformal/coverage_{name}"]
    assert 0 <= metrics["test/decision/refer_rate"] <= 1 and "test/ood/rejected" in metrics
    assert "test/patient/auroc" in metrics and "test/patient/auroc_ci_low" in metrics
    assert run.data.params["prediction_sets"].startswith("class-conditional split-conformal sets")
    sets = client.download_artifacts(run.info.run_id, "predictions/test_decisions.csv", str(tmp_path))
    with open(sets) as handle:
        assert handle.readline().strip() == "sample_id,true,label,set,refer,refer_reason,ood_score"


def test_a_coverage_the_validation_cannot_support_is_skipped_with_the_reason(store, tmp_path):
    from allcls.evaluation.task import evaluate

    overrides = [f"run_id={store['members'][0]}", "bootstrap=20", "num_workers=0", "conformal.coverage=0.99",
                 "ood.enabled=false"]
    evaluate(compose_config("evaluate", store["root"], overrides, output_dir=tmp_path / "eval"))
    run = store["client"].search_runs([store["experiment_id"]], "tags.stage = 'evaluate'",
                                      order_by=["attributes.start_time DESC"])[0]
    assert "99% coverage needs 100 validation subjects" in run.data.params["prediction_sets"]
    assert "hem has 3, all has 3" in run.data.params["prediction_sets"]
    assert "test/conformal/coverage" not in run.data.metrics


def test_subjects_with_uneven_cells_at_the_boundary_give_no_threshold_rather_than_a_crash():
    """19 subjects of 1 to 39 cells at 95%: the weighted cumulative share can round below the
    quantile level, which once indexed past the end of the scores."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        cells = rng.integers(1, 40, 19)
        subjects = [f"S{s}" for s, n in enumerate(cells) for _ in range(n)]
        probabilities = rng.dirichlet([1, 1], len(subjects))
        labels = rng.integers(0, 2, len(subjects))
        assert conformal.fit_threshold(probabilities, labels, subjects, 0.95) is None  # 20 are needed
        more = subjects + ["S19"] * 3
        assert conformal.fit_threshold(np.r_[probabilities, probabilities[:3]], np.r_[labels, labels[:3]], more,
                                       0.95) is not None
