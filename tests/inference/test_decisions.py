"""When a model answers and when it refers (allcls.inference.decision and its parts): coverage that
holds for a rare class, a bounded miss rate for the protected class, a rule that still refers when
validation was too easy, a temperature kept only where it helps, the out-of-distribution gate, and
one decision per patient."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from allcls.evaluation.decision_measures import measure
from allcls.evaluation.safeguards import fit_rule, patient_groups, silent_rule_warnings, table_outputs
from allcls.evaluation.settings import OodSettings, RuleSettings
from allcls.inference import conformal, patients
from allcls.inference.calibration import choose_temperature, fit_temperature
from allcls.inference.decision import AMBIGUOUS, NOT_CLEARED, OOD, UNCERTAIN, DecisionRule, SetRule
from allcls.inference.ood import OodGate
from allcls.predictions import make_table


def rare_class(samples, seed):
    """Three classes, the last one rare (4%) and harder: its cells get a lower probability of their
    own class than the others do, as a model trained on few of them would give."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, size=samples, p=[0.48, 0.48, 0.04])
    sharpness = np.where(labels == 2, 1.0, 6.0)
    logits = rng.normal(size=(samples, 3))
    logits[np.arange(samples), labels] += sharpness
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probabilities, labels


def test_marginal_sets_under_cover_a_rare_class_and_class_conditional_sets_do_not():
    probabilities, labels = rare_class(40000, 0)
    fit, test = slice(0, 20000), slice(20000, None)
    classes = ["common", "other", "rare"]
    covered = {}
    for kind in ("marginal", "class_conditional"):
        thresholds = conformal.fit_thresholds(probabilities[fit], labels[fit], [None] * 20000, 0.9, kind,
                                              classes).thresholds
        members = conformal.prediction_sets(probabilities[test], thresholds)
        covered[kind] = conformal.measure_sets(members, labels[test], [None] * 20000, 0, 0, classes).per_class
    assert covered["marginal"]["rare"][0].value < 0.8  # promised 0.9, on average over classes only
    for name in classes:
        assert covered["class_conditional"][name][0].value == pytest.approx(0.9, abs=0.03)


def test_a_class_with_too_few_validation_subjects_is_named_with_the_number_needed():
    probabilities, labels = rare_class(400, 1)
    subjects = [f"S{i % 40}" for i in range(400)]
    fitted = conformal.fit_thresholds(probabilities, labels, subjects, 0.95, "class_conditional",
                                      ["common", "other", "rare"])
    assert fitted.thresholds is None
    assert "needs 20 validation subjects per class" in fitted.reason(0.95, subjects)
    assert "rare has" in fitted.reason(0.95, subjects)
    # without subject ids (the 4-class dataset) the units are images, and the message says so
    unnamed = fitted.reason(0.95, [None] * 400)
    assert "needs 20 validation images (the dataset names no subjects" in unnamed and "more images" in unnamed


def exchangeable_binary(samples, seed):
    """Calibrated binary predictions: each label drawn from the predicted probability of class 1."""
    rng = np.random.default_rng(seed)
    p = rng.beta(0.5, 0.5, samples)
    return np.stack([1 - p, p], axis=1), (rng.random(samples) < p).astype(int)


@pytest.mark.parametrize("rate", [0.02, 0.05, 0.1])
def test_the_protected_miss_rate_holds_on_new_data(rate):
    probabilities, labels = exchangeable_binary(60000, 2)
    protected = np.array([False, True])
    threshold = conformal.fit_clearing_threshold(probabilities[:20000], labels[:20000], [None] * 20000, protected,
                                                 rate)
    test_p, test_y = probabilities[20000:], labels[20000:]
    refer = conformal.not_cleared(test_p, protected, threshold)
    miss = conformal.missed(test_p, test_y, protected, refer)[test_y == 1].mean()
    assert miss <= rate + 0.005
    assert miss >= rate - 0.02  # tight, not trivially safe
    assert refer.mean() < 0.5
    # without the rule the top class alone misses far more often
    assert conformal.missed(test_p, test_y, protected, np.zeros(len(test_y), bool))[test_y == 1].mean() > 1.5 * rate


def test_a_miss_rate_too_few_protected_subjects_can_support_gives_no_rule():
    probabilities, labels = exchangeable_binary(200, 3)
    subjects = [f"S{i % 10}" for i in range(200)]
    assert conformal.fit_clearing_threshold(probabilities, labels, subjects, np.array([False, True]), 0.05) is None


def easy_validation(seed=4):
    """Validation cells classified without error, with confident probabilities; and test cells
    where the model is unsure and sometimes wrong."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    top = rng.uniform(0.97, 1.0, 200)
    probabilities = np.where(labels[:, None] == 1, np.stack([1 - top, top], 1), np.stack([top, 1 - top], 1))
    return make_table([f"v{i}" for i in range(200)], [f"S{i % 20}" for i in range(200)], labels, probabilities,
                      ["hem", "all"])


def test_a_validation_split_without_error_still_gives_a_rule_that_refers_the_unsure_cells():
    validation = table_outputs(easy_validation())
    settings = RuleSettings(0.9, ood=OodSettings(enabled=False))
    fitted = fit_rule(validation, None, ["hem", "all"], settings)
    rule = fitted.rule
    assert rule.temperature is None and rule.temperature_note.startswith("none: every validation prediction was right")
    unsure = np.array([[0.55, 0.45], [0.3, 0.7], [0.995, 0.005]])
    decided = rule.decide(unsure, ["hem", "all"])
    assert decided.refer.tolist() == [True, True, False]
    assert decided.reasons[:2] == [UNCERTAIN, UNCERTAIN] and decided.reasons[2] == ""
    assert conformal.set_labels(decided.members, ["hem", "all"]) == ["", "", "hem"]


def test_a_rule_that_refers_nobody_or_everybody_on_validation_is_named_with_a_better_coverage():
    # four in five validation cells right, every prediction confident: marginal sets at 90% hold both classes
    labels = np.array([0, 1] * 100)
    wrong = np.arange(200) % 5 == 0
    predicted = np.where(wrong, 1 - labels, labels)
    probabilities = np.where(predicted[:, None] == 1, [[0.01, 0.99]], [[0.99, 0.01]])
    table = make_table([f"v{i}" for i in range(200)], [None] * 200, labels, probabilities, ["hem", "all"])
    validation = table_outputs(table)
    settings = RuleSettings(0.9, "marginal", ood=OodSettings(enabled=False))
    fitted = fit_rule(validation, None, ["hem", "all"], settings)
    assert fitted.warnings and fitted.warnings[0].startswith("At 90% coverage this model refers 100% of the validation")
    assert "80% refers" in fitted.warnings[0]
    quiet = RuleSettings(0.9, ood=OodSettings(enabled=False))
    assert not silent_rule_warnings(table_outputs(easy_validation()), fit_rule(table_outputs(easy_validation()), None,
                                    ["hem", "all"], quiet).rule, ["hem", "all"], quiet, None)


def test_a_temperature_that_would_worsen_validation_ece_is_not_kept():
    rng = np.random.default_rng(5)
    correct = rng.random(1000) < 0.9  # calibrated at 0.9...
    probabilities = np.r_[np.tile([[0.9, 0.1]], (1000, 1)), np.tile([[0.999, 0.001]], (30, 1))]
    labels = np.r_[np.where(correct, 0, 1), np.ones(30, dtype=int)]  # ...apart from 30 confident mistakes
    assert fit_temperature(probabilities, labels) > 1.2  # the log loss wants them softened
    temperature, note = choose_temperature(probabilities, labels)
    assert temperature is None and note.startswith("not kept: it made the validation ECE worse")
    overconfident = np.r_[np.tile([[0.99, 0.01]], (1000, 1))]
    kept, note = choose_temperature(overconfident, np.where(correct, 0, 1))
    assert kept is not None and kept > 1 and note.startswith("kept")


def test_the_gate_rejects_what_is_far_from_the_training_features_and_passes_its_own():
    rng = np.random.default_rng(6)
    centres = rng.normal(0, 3, (2, 16))

    def summaries(n):  # what an input summary of ordinary cells looks like: 78 numbers near one point
        return 0.5 + rng.normal(0, 0.05, (n, 78))

    def cells(n):
        labels = rng.integers(0, 2, n)
        features = centres[labels] + rng.normal(0, 1, (n, 16))
        logits = np.stack([-(features - c).__pow__(2).sum(1) / 10 for c in centres], axis=1)
        return [summaries(n)], [features], [logits], labels

    train, validation, test = cells(400), cells(400), cells(2000)
    gate = OodGate.fit((train[0], train[1], train[3]), validation[:3], max_rejected=0.02)
    assert gate.rejects(gate.scores(*test[:3])).mean() <= 0.05
    far = rng.normal(0, 1, (200, 16)) * 8 + 20
    far_logits = np.stack([-(far - c).__pow__(2).sum(1) / 10 for c in centres], axis=1)
    assert gate.rejects(gate.scores([summaries(200)], [far], [far_logits])).all()
    confident = centres[0] + 30 * (centres[0] - centres[1])  # far from both, yet the logits are sure of class 0
    scores = gate.scores([summaries(1)], [confident[None]], [np.array([[50.0, -50.0]])])
    assert gate.rejects(scores).all()  # the features catch what the output score alone would not
    odd_input = summaries(1) + 0.5  # an image unlike the cells, that the network nonetheless places among them
    assert gate.rejects(gate.scores([odd_input], [centres[:1]], [np.array([[5.0, -5.0]])])).all()
    assert not gate.rejects(gate.scores([summaries(1)], [centres[:1]], [np.array([[5.0, -5.0]])])).any()


def test_reasons_come_in_order_and_every_one_is_named():
    rule = DecisionRule(sets=SetRule("class_conditional", 0.9, [0.4, 0.4]), ood_threshold=1.0,
                        protect=conformal_protect())
    probabilities = np.array([[0.65, 0.35], [0.9, 0.1], [0.3, 0.7], [0.5, 0.5], [0.2, 0.8]])
    decided = rule.decide(probabilities, ["hem", "all"], ood_scores=np.array([0.0, 5.0, 0.0, 0.0, 5.0]))
    assert decided.reasons == [NOT_CLEARED, OOD, "", f"{NOT_CLEARED}; {UNCERTAIN}", OOD]
    assert decided.refer.tolist() == [True, True, False, True, True]
    wide = DecisionRule(sets=SetRule("marginal", 0.9, [0.7, 0.7])).decide(np.array([[0.6, 0.4]]), ["hem", "all"])
    assert wide.reasons == [AMBIGUOUS] and conformal.set_labels(wide.members, ["hem", "all"]) == ["hem|all"]
    vote = DecisionRule().decide(np.array([[0.6, 0.4]]), ["hem", "all"], vote=np.array([1]))
    assert vote.reasons == [AMBIGUOUS] and vote.labels.tolist() == [1]  # the vote and the probabilities disagree


def conformal_protect():
    from allcls.inference.decision import ProtectRule

    return ProtectRule(["all"], 0.05, 0.3)


def test_patient_level_metrics_equal_a_hand_computation():
    rng = np.random.default_rng(7)
    subjects = [f"P{i // 6}" for i in range(60)]  # ten patients of six cells
    labels = np.repeat([0, 1] * 5, 6)
    p_all = np.clip(0.5 + 0.3 * (labels - 0.5) + rng.normal(0, 0.25, 60), 0.01, 0.99)
    probabilities = np.stack([1 - p_all, p_all], axis=1)
    table = make_table([f"c{i}" for i in range(60)], subjects, labels, probabilities, ["hem", "all"])
    split = table_outputs(table)
    settings = RuleSettings(0.8, ood=OodSettings(enabled=False))
    fitted = fit_rule(split, None, ["hem", "all"], settings)
    _, measured = measure(split, fitted, ["hem", "all"], 200, 0)
    shown = patients.calibrated(probabilities, fitted.rule.temperature)  # the cells' probabilities as served
    by_hand = {s: shown[[i for i, t in enumerate(subjects) if t == s]].mean(axis=0) for s in sorted(set(subjects))}
    truth = np.array([labels[subjects.index(s)] for s in by_hand])
    mean = np.array(list(by_hand.values()))
    scaled = mean if fitted.rule.patient.temperature is None else \
        patients.calibrated(mean, fitted.rule.patient.temperature)
    table = measured.patients.set_index("metric")["value"]
    assert table["auroc"] == pytest.approx(roc_auc_score(truth, scaled[:, 1]))
    called = scaled.argmax(axis=1)
    assert table["recall_all"] == pytest.approx(((called == 1) & (truth == 1)).sum() / (truth == 1).sum())
    assert table["specificity_all"] == pytest.approx(((called == 0) & (truth == 0)).sum() / (truth == 0).sum())
    assert table["patients"] == 10
    grouped, grouped_labels = patient_groups(split, probabilities, None, fitted.rule)
    assert grouped.ids == sorted(by_hand) and grouped_labels.tolist() == truth.tolist()


def test_a_patients_call_leaves_out_cells_out_of_distribution_and_refers_a_patient_made_of_them():
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.2, 0.8], [0.3, 0.7]])
    ood = np.array([False, False, True, True, False])
    grouped = patients.group(probabilities, ["A", "A", "A", "B", "B"], ~ood, np.ones(5, bool), ood)
    assert grouped.probabilities[0] == pytest.approx([0.85, 0.15])  # A's third cell left out
    assert grouped.probabilities[1] == pytest.approx([0.3, 0.7])
    rule = patients.PatientRule(patients.AGGREGATION, None, None, None, 0)
    decided = patients.decide(rule, grouped)
    assert decided.refer.tolist() == [False, False]
    all_ood = patients.group(probabilities, ["A"] * 5, np.zeros(5, bool), np.ones(5, bool), np.ones(5, bool))
    assert patients.decide(rule, all_ood).reasons == [OOD]


def test_the_gates_training_sample_keeps_every_class_in_its_share():
    from allcls.evaluation.safeguards import train_sample
    from allcls.evaluation.targets import EvaluationSet

    labels = np.array([0] * 180 + [1] * 20)
    samples = EvaluationSet("d", "train", [f"c{i}" for i in range(200)], [None] * 200, [f"p{i}" for i in range(200)],
                            labels)
    kept = train_sample(samples, 50, 0)
    assert np.bincount(kept.labels).tolist() == [45, 5] and kept.sample_ids == sorted(kept.sample_ids, key=lambda s:
                                                                                      int(s[1:]))
    assert train_sample(samples, 500, 0) is samples
