"""Metrics agree with scikit-learn and with each other wherever they are computed; one vocabulary of
names and directions; the prediction table refuses anything but its contract."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn import metrics as sk

from allcls.errors import AllclsError
from allcls.metrics.epoch import epoch_metrics, flatten
from allcls.metrics.names import (
    TRAINING_PER_CLASS,
    TRAINING_SCALAR,
    base_name,
    higher_is_better,
    metric_names,
    mode,
    regret,
)
from allcls.metrics.vectorised import confusion_frame, table_scores
from allcls.predictions import align, make_table, read_table, validate_table, write_table

CLASSES = ["Benign", "Early", "Pre", "Pro"]


@pytest.fixture
def predictions():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 300)
    logits = rng.normal(size=(300, 4)) + 1.5 * np.eye(4)[labels]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probabilities, labels


def test_metrics_match_scikit_learn(predictions):
    probabilities, labels = predictions
    predicted = probabilities.argmax(axis=1)
    scores = table_scores(probabilities, labels, CLASSES, "test/")
    assert scores["test/accuracy"] == pytest.approx(sk.accuracy_score(labels, predicted), abs=1e-6)
    assert scores["test/balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(labels, predicted), abs=1e-6)
    assert scores["test/f1_weighted"] == pytest.approx(sk.f1_score(labels, predicted, average="weighted"), abs=1e-6)
    assert scores["test/f1_macro"] == pytest.approx(sk.f1_score(labels, predicted, average="macro"), abs=1e-6)
    assert scores["test/kappa"] == pytest.approx(sk.cohen_kappa_score(labels, predicted), abs=1e-6)
    assert scores["test/auroc"] == pytest.approx(sk.roc_auc_score(labels, probabilities, multi_class="ovr"), abs=1e-4)
    recall = sk.recall_score(labels, predicted, average=None)
    assert [scores[f"test/recall_{c}"] for c in CLASSES] == pytest.approx(recall, abs=1e-6)
    assert sorted(scores) == sorted(metric_names(CLASSES, "test/"))
    matrix = confusion_frame(probabilities, labels, CLASSES)
    assert (matrix.to_numpy() == sk.confusion_matrix(labels, predicted)).all()


def test_training_epoch_metrics_equal_the_table_metrics_under_the_same_names(predictions):
    """What training logs per epoch (torchmetrics, pooled over batches) and what it logs for test
    after fit (the vectorised metrics evaluation uses too) mean the same thing."""
    probabilities, labels = predictions
    metrics = epoch_metrics(len(CLASSES))
    assert set(metrics.keys()) == set(TRAINING_SCALAR + TRAINING_PER_CLASS)
    for start in range(0, len(labels), 64):
        metrics.update(torch.as_tensor(probabilities[start:start + 64], dtype=torch.float32),
                       torch.as_tensor(labels[start:start + 64]))
    pooled = flatten(metrics.compute(), CLASSES, "val/")
    table = table_scores(probabilities, labels, CLASSES, "val/")
    assert sorted(pooled) == sorted(table)
    assert [pooled[name] for name in sorted(table)] == pytest.approx([table[name] for name in sorted(table)], abs=1e-4)


def test_direction_is_decided_once_and_ranking_uses_regret():
    assert [base_name(n) for n in ("val/recall_all", "val/f1_weighted_best", "test/log_loss", "val/loss")] == [
        "recall", "f1_weighted", "log_loss", "loss"]
    assert higher_is_better("val/kappa") and not higher_is_better("val/loss") and not higher_is_better("ece")
    assert mode("val/f1_weighted") == "max" and mode("val/loss") == "min"
    assert regret("kappa", [0.2, 0.9]).argmin() == 1 and regret("log_loss", [0.2, 0.9]).argmin() == 0


def table(n=4):
    """n cells, each with probabilities of its own (so that a row out of place shows)."""
    leukemic = np.arange(1, n + 1) / (n + 2)
    probabilities = np.column_stack([1 - leukemic, leukemic])
    return make_table([f"img{i}.bmp" for i in range(n)], ["S1"] * n, [0, 1] * (n // 2), probabilities, ["hem", "all"])


def test_table_round_trips_through_parquet(tmp_path):
    path = write_table(table(), tmp_path / "predictions" / "val.parquet")
    back = read_table(path, ["hem", "all"])
    assert list(back.columns) == ["sample_id", "subject", "label", "prob_hem", "prob_all"]
    assert back["label"].tolist() == [0, 1, 0, 1]
    assert back["prob_all"].tolist() == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6])


@pytest.mark.parametrize("spoil, message", [
    (lambda t: t.drop(columns="subject"), "no column"),
    (lambda t: t.assign(prob_all=np.nan), "NaN"),
    (lambda t: t.assign(prob_all=0.9), "do not sum to 1"),
    (lambda t: pd.concat([t, t.iloc[:1]]), "more than once"),
    (lambda t: t.assign(label=5), "labels outside"),
    (lambda t: t.rename(columns={"prob_hem": "prob_normal"}), "classes"),
])
def test_table_refuses_what_breaks_the_contract(spoil, message):
    with pytest.raises(AllclsError, match=message):
        validate_table(spoil(table()), ["hem", "all"])


def test_align_lines_tables_up_by_sample_id():
    first = table()
    second = first.assign(prob_hem=first["prob_all"], prob_all=first["prob_hem"]).iloc[::-1]  # the rows reversed
    keys, probs = align([first, second], ["a", "b"])
    assert keys["sample_id"].tolist() == sorted(first["sample_id"])
    assert probs.shape == (2, 4, 2)
    for model, frame in enumerate((first, second)):  # each cell's own label and probabilities
        cells = frame.set_index("sample_id").loc[keys["sample_id"]]
        assert keys["label"].tolist() == cells["label"].tolist()
        assert probs[model] == pytest.approx(cells[["prob_hem", "prob_all"]].to_numpy())


@pytest.mark.parametrize("spoil, message", [
    (lambda t: t.iloc[1:], r"1 missing from b \(e.g. 'img0.bmp'\)"),
    (lambda t: pd.concat([t, table(6).iloc[4:5]]), r"1 only in b \(e.g. 'img4.bmp'\)"),
    (lambda t: t.assign(label=1 - t["label"]), "disagree on the label of 'img0.bmp'"),
])
def test_align_names_the_sample_that_does_not_match(spoil, message):
    with pytest.raises(AllclsError, match=message):
        align([table(), spoil(table())], ["a", "b"])
