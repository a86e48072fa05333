"""Evaluation building blocks on hand-built predictions: metrics against scikit-learn, confidence
intervals, calibration, test-time augmentation views, Grad-CAM maps, class mapping."""

import numpy as np
import pytest
import torch
from sklearn import metrics as sk

from allcls.errors import AllclsError
from allcls.evaluation.gradcam import choose_samples
from allcls.evaluation.targets import label_index
from allcls.inference.calibration import apply_temperature, fit_temperature
from allcls.inference.gradcam import combine_maps, gradcam, target_layer
from allcls.inference.views import TTA_VIEWS
from allcls.metrics.bootstrap import metric_table
from allcls.metrics.vectorised import expected_calibration_error
from allcls.models.backbones import BackboneSpec, create_backbone
from allcls.training.best_checkpoint import predict_probabilities

CLASSES = ["hem", "all"]


def predictions(samples=400, per_subject=10, sharpness=1.0, seed=0):
    """Binary predictions with per-subject effects; `sharpness` > 1 makes them overconfident."""
    rng = np.random.default_rng(seed)
    subjects = np.repeat([f"S{i}" for i in range(samples // per_subject)], per_subject)
    labels = np.repeat(rng.integers(0, 2, samples // per_subject), per_subject)
    per_subject_effect = np.repeat(rng.normal(0, 0.5, samples // per_subject), per_subject)
    margin = (2 * labels - 1) * 1.0 + rng.normal(0, 1.2, samples) + per_subject_effect
    p_all = 1 / (1 + np.exp(-sharpness * margin))
    return np.stack([1 - p_all, p_all], axis=1), labels, subjects


def by_metric(table):
    return table.set_index("metric")


def test_metric_values_equal_scikit_learn():
    probs, labels, subjects = predictions()
    table = by_metric(metric_table(probs, labels, subjects, CLASSES, replicates=0, seed=0))
    predicted = probs.argmax(axis=1)
    assert table.loc["f1_weighted", "value"] == pytest.approx(sk.f1_score(labels, predicted, average="weighted"))
    assert table.loc["balanced_accuracy", "value"] == pytest.approx(sk.balanced_accuracy_score(labels, predicted))
    assert table.loc["kappa", "value"] == pytest.approx(sk.cohen_kappa_score(labels, predicted))
    assert table.loc["auroc", "value"] == pytest.approx(sk.roc_auc_score(labels, probs[:, 1]))
    assert table.loc["log_loss", "value"] == pytest.approx(sk.log_loss(labels, probs))
    recall = sk.recall_score(labels, predicted, average=None)
    assert table.loc["recall_all", "value"] == pytest.approx(recall[1])
    assert table.loc["specificity_all", "value"] == pytest.approx(recall[0])  # binary: specificity = other's recall
    assert table.loc["precision_hem", "value"] == pytest.approx(sk.precision_score(labels, predicted, average=None)[0])


def test_ece_by_hand():
    # two bins used: confidence 0.9 (3 right of 4) and 0.6 (1 right of 2)
    probs = np.array([[0.9, 0.1]] * 4 + [[0.4, 0.6]] * 2)
    labels = np.array([0, 0, 0, 1, 1, 0])
    expected = (4 * abs(0.75 - 0.9) + 2 * abs(0.5 - 0.6)) / 6
    assert expected_calibration_error(probs[None], labels)[0] == pytest.approx(expected)


def test_intervals_contain_the_estimate_and_narrow_with_more_subjects():
    widths = []
    for samples in (200, 3200):
        probs, labels, subjects = predictions(samples=samples)
        table = by_metric(metric_table(probs, labels, subjects, CLASSES, replicates=500, seed=1))
        for metric in ("f1_weighted", "auroc", "kappa", "recall_all"):
            row = table.loc[metric]
            assert row.ci_low <= row.value <= row.ci_high, metric
        widths.append(table.loc["f1_weighted", "ci_high"] - table.loc["f1_weighted", "ci_low"])
    assert widths[1] < widths[0] / 2


def test_resampling_by_subject_gives_wider_intervals_than_by_cell():
    probs, labels, subjects = predictions(samples=600, per_subject=30)
    by_subject = by_metric(metric_table(probs, labels, subjects, CLASSES, replicates=500, seed=0))
    by_cell = by_metric(metric_table(probs, labels, [None] * len(labels), CLASSES, replicates=500, seed=0))
    width = lambda t: t.loc["accuracy", "ci_high"] - t.loc["accuracy", "ci_low"]  # noqa: E731
    assert width(by_subject) > width(by_cell)


def test_temperature_scaling_lowers_ece_of_an_overconfident_model():
    val_probs, val_labels, _ = predictions(sharpness=5.0, seed=1)
    test_probs, test_labels, _ = predictions(sharpness=5.0, seed=2)
    temperature = fit_temperature(val_probs, val_labels)
    assert temperature > 1.5  # it softens an overconfident model
    before = expected_calibration_error(test_probs[None], test_labels)[0]
    after = expected_calibration_error(apply_temperature(test_probs, temperature)[None], test_labels)[0]
    assert after < before / 2
    assert (apply_temperature(test_probs, temperature).argmax(axis=1) == test_probs.argmax(axis=1)).all()


def test_no_temperature_is_fitted_when_validation_is_all_correct():
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert fit_temperature(probs, np.array([0, 1, 0])) is None
    assert fit_temperature(probs, np.array([0, 1, 1])) is not None


def test_tta_averages_the_views():
    torch.manual_seed(0)
    model = create_backbone(BackboneSpec("custom_cnn"), num_classes=2).eval()
    images = torch.randn(6, 3, 32, 32)
    loader = [(images, torch.zeros(6))]
    views = ["identity", "hflip", "rot90"]
    with torch.no_grad():
        expected = sum(model(TTA_VIEWS[v](images)).double().softmax(1) for v in views) / 3
    assert predict_probabilities(model, loader, "cpu", views) == pytest.approx(expected.numpy())
    plain = model(images).double().softmax(1).detach().numpy()
    assert predict_probabilities(model, loader, "cpu") == pytest.approx(plain)
    with pytest.raises(AllclsError, match="Unknown test-time augmentation"):
        predict_probabilities(model, loader, "cpu", ["mirror"])


@pytest.mark.parametrize("name", ["custom_cnn", "mobilenetv2_100"])
def test_gradcam_maps_have_the_image_size_and_differ_between_classes(name):
    torch.manual_seed(0)
    model = create_backbone(BackboneSpec(name), num_classes=2)
    images = torch.randn(3, 3, 64, 64)
    maps_hem = gradcam(model, images, [0, 0, 0])
    maps_all = gradcam(model, images, [1, 1, 1])
    assert maps_hem.shape == (3, 64, 64) and maps_hem.min() >= 0 and maps_hem.max() <= 1
    assert not np.allclose(maps_hem, maps_all)
    assert isinstance(target_layer(model), torch.nn.Module)


def test_ensemble_maps_are_weighted_and_resized():
    a = np.zeros((1, 4, 4), np.float32)
    a[0, :2] = 1  # top half
    b = np.zeros((1, 8, 8), np.float32)
    b[0, :, :4] = 1  # left half
    combined = combine_maps([a, b], [0.75, 0.25], 16)
    assert combined.shape == (1, 16, 16) and combined.max() == pytest.approx(1)
    assert combined[0, 2, 2] > combined[0, 12, 2] > combined[0, 12, 12]


def test_chosen_samples_cover_every_class_and_put_mistakes_first():
    labels = np.array([0] * 10 + [1] * 10)
    predicted = labels.copy()
    predicted[[0, 11]] = 1 - labels[[0, 11]]
    chosen = choose_samples(labels, predicted, per_class=3, seed=0)
    assert len(chosen) == 6 and {0, 11} <= set(chosen)
    ids = [f"img{i}" for i in range(20)]
    assert choose_samples(labels, predicted, 3, 0, ["img5", "img7"], ids).tolist() == [5, 7]
    with pytest.raises(AllclsError, match="not in the evaluated split"):
        choose_samples(labels, predicted, 3, 0, ["nope"], ids)


def test_class_mapping_to_the_model_classes():
    assert label_index(["hem", "all"], ["hem", "all"], {}) == {"hem": 0, "all": 1}
    mapped = label_index(["normal", "blast"], ["hem", "all"], {"normal": "hem", "blast": "all"})
    assert mapped == {"normal": 0, "blast": 1}
    with pytest.raises(AllclsError, match=r"class\(es\) \['blast'\] are not classes of the model"):
        label_index(["hem", "blast"], ["hem", "all"], {})
