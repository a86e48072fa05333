"""The batch input pipeline: uint8 batches from the loaders, flips and right-angle rotations per
batch on the device, normalisation on the device; and which pipeline a run uses."""

from collections import Counter

import albumentations as A
import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency

from allcls.data.batch_transforms import SYMMETRIES, BatchAugmentation
from allcls.data.datamodule import CellDataModule, choose_pipeline
from allcls.data.normalisation import Normalisation
from allcls.data.preparation import prepare_dataset
from allcls.data.preprocessing import InputSpec
from allcls.data.readers import CNMCReader
from allcls.data.splits import SplitSpec
from allcls.data.transforms import build_transform
from allcls.errors import AllclsError
from allcls.training.task import train

SPEC = InputSpec(32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

# An image with no symmetry of its own: each of the square's eight symmetries gives another view.
PROBE = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
VIEWS = {symmetry(torch.from_numpy(PROBE).permute(2, 0, 1)).contiguous().numpy().tobytes(): index
         for index, symmetry in enumerate(SYMMETRIES)}

PRESETS = {
    "basic": [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=1.0)],
    "uneven": [A.HorizontalFlip(p=0.3), A.RandomRotate90(p=0.6), A.Transpose(p=0.2)],
    "d4": [A.D4(p=0.7)],
    "vflip": [A.VerticalFlip(p=0.9)],
}


def view_counts(images_chw: np.ndarray) -> Counter:
    return Counter(VIEWS[np.ascontiguousarray(image).tobytes()] for image in images_chw)


@pytest.mark.parametrize("preset", PRESETS)
def test_batch_augmentation_gives_the_views_albumentations_gives_as_often(preset):
    """Draws of allcls's per-sample pipeline (albumentations, seeded as runs seed it) against the
    batch form: both must show a cell in the same orientations, as often. (The per-sample pipeline
    once flipped both ways together, never mirroring a cell: albumentations seeded each transform alike.)"""
    draws = 4000
    unscaled = InputSpec(4, (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255))  # normalising leaves the pixel values
    pipeline = build_transform(unscaled, roi_crop=False, augmentations=PRESETS[preset], resized=True, seed=0)
    per_sample = view_counts(np.stack([pipeline(image=PROBE)["image"].round().byte().numpy() for _ in range(draws)]))
    batch = torch.from_numpy(np.stack([PROBE] * draws))
    batched = view_counts(BatchAugmentation(PRESETS[preset], seed=0)(Normalisation.channels_first(batch)).numpy())
    assert sum(per_sample.values()) == sum(batched.values()) == draws  # every output is one of the eight views
    views = sorted(set(per_sample) | set(batched))
    table = [[per_sample[v] for v in views], [batched[v] for v in views]]
    assert set(per_sample) == set(batched), table  # the same views...
    assert chi2_contingency(table).pvalue > 0.001, table  # ...as often
    assert all(abs(a - b) / draws < 0.03 for a, b in zip(*table, strict=True)), table


def test_batch_augmentation_follows_its_seed_and_draws_per_image():
    batch = Normalisation.channels_first(torch.from_numpy(np.stack([PROBE] * 64)))
    first = BatchAugmentation(PRESETS["basic"], seed=3)(batch.clone())
    assert torch.equal(first, BatchAugmentation(PRESETS["basic"], seed=3)(batch.clone()))
    assert not torch.equal(first, BatchAugmentation(PRESETS["basic"], seed=4)(batch.clone()))
    assert len(view_counts(first.numpy())) == 8  # images of one batch get different views


def test_normalisation_on_the_device_matches_the_per_sample_pipeline():
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8))
    normalised = Normalisation(SPEC)(Normalisation.channels_first(images))
    reference = build_transform(SPEC, roi_crop=False, resized=True)
    expected = torch.stack([reference(image=image)["image"] for image in images.numpy()])
    assert normalised.dtype == torch.float32 and normalised.is_contiguous()
    assert torch.allclose(normalised, expected, atol=1e-5)


def test_the_pipeline_is_batch_where_the_augmentation_has_a_batch_form():
    assert choose_pipeline("auto", PRESETS["basic"]) == "batch"
    assert choose_pipeline("auto", []) == "batch"
    strong = [*PRESETS["basic"], A.ColorJitter()]
    assert choose_pipeline("auto", strong) == "per_sample"
    assert choose_pipeline("per_sample", PRESETS["basic"]) == "per_sample"
    with pytest.raises(AllclsError, match="data.pipeline=batch cannot apply ColorJitter per batch"):
        choose_pipeline("batch", strong)


def test_loaders_carry_uint8_and_the_hook_makes_the_network_input(cnmc_root):
    module = CellDataModule(prepare_dataset(CNMCReader(cnmc_root), SplitSpec()), SPEC, PRESETS["basic"],
                            num_workers=0, batch_size=8)
    module.setup()
    images, labels = next(iter(module.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (8, 32, 32, 3)
    model_input = module.model_input(images, train=True)
    assert model_input.dtype == torch.float32 and model_input.shape == (8, 3, 32, 32)
    plain = module.model_input(images)  # evaluation: normalised, not augmented
    assert torch.allclose(plain, Normalisation(SPEC)(Normalisation.channels_first(images)))
    assert not torch.equal(model_input, plain)
    # The per-sample pipeline normalises in the loader; the hook passes its batches on untouched.
    per_sample = CellDataModule(module.prepared, SPEC, [A.ColorJitter(p=1.0)], num_workers=0, batch_size=8)
    per_sample.setup()
    floats, _ = next(iter(per_sample.train_dataloader()))
    assert floats.dtype == torch.float32 and per_sample.model_input(floats, train=True) is floats


def test_a_run_says_which_pipeline_served_it(train_cfg, mlflow_client):
    train(train_cfg("augmentation=strong", "+trainer.limit_train_batches=2"))
    experiment = mlflow_client.get_experiment_by_name("synthetic-cnmc")
    (run,) = mlflow_client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["input_pipeline"] == "per_sample"
