"""Class imbalance options: class-weighted loss, weighted sampler, random oversampling."""

from collections import Counter

import cv2
import numpy as np
import pytest
import torch

from allcls.data import imbalance
from allcls.data.datamodule import CellDataModule
from allcls.data.preparation import prepare_dataset
from allcls.data.preprocessing import InputSpec
from allcls.data.readers import FolderReader
from allcls.data.splits import SplitSpec
from allcls.errors import AllclsError


def test_loss_weights_are_inverse_frequency_averaging_to_one():
    labels = [0] * 30 + [1] * 10
    weights = imbalance.loss_weights(labels, 2)
    assert weights == pytest.approx([40 / (2 * 30), 40 / (2 * 10)])
    assert np.mean([weights[y] for y in labels]) == pytest.approx(1.0)


def test_oversampling_balances_every_class_to_the_largest():
    labels = [0] * 30 + [1] * 10 + [2] * 5
    indices = imbalance.oversample(labels, seed=0)
    assert Counter(labels[i] for i in indices) == {0: 30, 1: 30, 2: 30}
    assert set(range(45)) <= set(indices)  # every original sample is kept


def test_unknown_strategy_is_refused():
    with pytest.raises(AllclsError, match="data.imbalance='smote'"):
        imbalance.check_strategy("smote")


@pytest.fixture
def skewed(tmp_path):
    """A class-folder tree with four times more 'major' than 'minor' images."""
    for index in range(100):
        label = "major" if index < 80 else "minor"
        path = tmp_path / label / f"{index}.png"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), np.full((8, 8, 3), index, np.uint8))
    return FolderReader(tmp_path, ["major", "minor"])


def module(reader, strategy):
    spec = InputSpec(8, (0.5,) * 3, (0.5,) * 3)
    dm = CellDataModule(prepare_dataset(reader, SplitSpec(val_fraction=0.2, test_fraction=0.2)), spec,
                        num_workers=0, batch_size=8, imbalance=strategy)
    dm.setup()
    return dm


def test_weighted_sampler_draws_classes_evenly(skewed):
    dm = module(skewed, "weighted_sampler")
    drawn = Counter(int(y) for _ in range(10) for _, labels in dm.train_dataloader() for y in labels)
    assert drawn[1] / sum(drawn.values()) == pytest.approx(0.5, abs=0.08)


def test_oversample_repeats_minority_training_images(skewed):
    plain, balanced = module(skewed, "none"), module(skewed, "oversample")
    assert Counter(balanced.datasets["train"].labels)[1] == Counter(balanced.datasets["train"].labels)[0]
    assert len(balanced.datasets["train"]) > len(plain.datasets["train"])
    assert len(balanced.datasets["val"]) == len(plain.datasets["val"])  # evaluation data untouched


def test_class_weights_only_when_asked(skewed):
    assert module(skewed, "none").loss_weights() is None
    weights = module(skewed, "class_weights").loss_weights()
    assert weights[1] > 1 > weights[0]


def test_feature_smote_fills_each_class_up_to_the_largest_between_same_class_neighbours():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(10, 4)
    labels = torch.tensor([0] * 6 + [1] * 3 + [2])  # class 2 has one sample: nothing to interpolate
    made, made_labels = imbalance.feature_smote(features, labels, 3, neighbours=2, generator=generator)
    assert made_labels.tolist() == [1, 1, 1]
    minority = features[labels == 1]
    for point in made:  # on a segment between two class-1 samples
        on_segment = []
        for a in minority:
            for b in minority:
                if a is b:
                    continue
                t = torch.dot(point - a, b - a) / torch.dot(b - a, b - a)
                on_segment.append(0 <= t <= 1 and torch.allclose(a + t * (b - a), point, atol=1e-5))
        assert any(on_segment)


def test_training_with_feature_smote_learns_from_synthetic_minority_features(train_cfg, mlflow_client,
                                                                            inside_training):
    from allcls.training.task import train

    train(train_cfg("data.imbalance=feature_smote", "trainer.max_epochs=3"))
    experiment = mlflow_client.get_experiment_by_name("synthetic-cnmc")
    (run,) = mlflow_client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["imbalance"] == "feature_smote"
    assert run.data.metrics["test/auroc"] > 0.6
    # Each training batch's loss also counts synthetic features of its smaller class, up to the larger:
    # more samples than the 3 epochs hold, every batch balanced.
    trained = [loss.targets for loss in inside_training.losses if loss.training]
    assert sum(len(targets) for targets in trained) > 3 * int(run.data.params["n_train"])
    assert all(torch.bincount(targets, minlength=2).unique().numel() == 1 for targets in trained)
