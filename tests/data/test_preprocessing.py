"""Region-of-interest crop, resize to the backbone's size, normalisation, train-time augmentation."""

import albumentations as A
import numpy as np
import pytest
import torch

from allcls.data.datamodule import CellDataModule, seed_worker
from allcls.data.images import read_image
from allcls.data.preparation import prepare_dataset
from allcls.data.preprocessing import InputSpec, crop_to_foreground, resize_antialiased
from allcls.data.readers import CNMCReader
from allcls.data.splits import SplitSpec
from allcls.data.transforms import build_transform

SPEC = InputSpec(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_roi_crop_keeps_the_cell_and_drops_the_black_border():
    image = np.zeros((100, 100, 3), np.uint8)
    image[30:50, 40:80] = 200  # a 20 x 40 cell off-centre
    crop = crop_to_foreground(image, margin=0.0)
    assert crop.shape == (40, 40, 3)  # its bounding box, padded to a square
    assert (crop > 0).any(axis=2).sum() == 20 * 40


def test_roi_crop_leaves_an_all_black_image_alone():
    image = np.zeros((10, 12, 3), np.uint8)
    assert crop_to_foreground(image) is image


def test_roi_crop_finds_the_box_of_pixels_with_any_channel_above_the_threshold():
    """The fast box (on the H x W*3 bytes) equals the plain definition, one channel lit at a time,
    at the image's edges and in a non-contiguous array."""
    rng = np.random.default_rng(0)
    for trial in range(200):
        height, width = rng.integers(1, 40, 2)
        image = np.zeros((height, width, 3), np.uint8)
        top, left = rng.integers(0, height), rng.integers(0, width)
        image[top:rng.integers(top, height) + 1, left:rng.integers(left, width) + 1, trial % 3] = rng.integers(0, 30)
        lit = np.argwhere(image.max(axis=2) > 10)
        crop = crop_to_foreground(np.asfortranarray(image), margin=0.0)
        if lit.size == 0:
            assert crop.shape == image.shape
        else:
            (top, left), (bottom, right) = lit.min(axis=0), lit.max(axis=0) + 1
            assert crop.shape[:2] == (max(bottom - top, right - left),) * 2
            assert (crop.max(axis=2) > 10).sum() == len(lit)


@pytest.mark.parametrize("height, width", [(450, 450), (451, 603), (600, 600), (100, 100), (7, 3), (224, 224)])
def test_resize_gives_the_input_size_from_any_size(height, width):
    image = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    assert resize_antialiased(image, 224).shape == (224, 224, 3)


def test_shrinking_does_not_alias_a_fine_pattern():
    stripes = np.zeros((450, 450, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: a correct shrink gives flat grey, aliasing gives bands
    small = resize_antialiased(stripes, 224).astype(float)
    assert abs(small.mean() - 127.5) < 3 and small.std() < 12


def test_pipeline_resizes_and_normalises_to_the_backbone_spec():
    image = np.full((450, 450, 3), 191, np.uint8)  # C-NMC-sized
    tensor = build_transform(SPEC, roi_crop=False)(image=image)["image"]
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32
    assert torch.allclose(tensor, torch.full_like(tensor, (191 / 255 - 0.5) / 0.25), atol=1e-5)


def test_roi_crop_makes_the_cell_fill_the_input(cnmc_root):
    module = CellDataModule(prepare_dataset(CNMCReader(cnmc_root), SplitSpec()), SPEC, roi_crop=True, num_workers=0)
    module.setup()
    cropped = module.datasets["train"][0][0]  # uint8 H x W x 3: normalised later, on the device
    plain = CellDataModule(prepare_dataset(CNMCReader(cnmc_root), SplitSpec()), SPEC, roi_crop=False, num_workers=0)
    plain.setup()
    uncropped = plain.datasets["train"][0][0]
    assert (cropped > 6).float().mean() > (uncropped > 6).float().mean() + 0.15  # fewer background pixels


@pytest.mark.parametrize("pipeline", ["batch", "per_sample"])
def test_augmentations_apply_to_train_only(cnmc_root, pipeline):
    flip = A.HorizontalFlip(p=1.0)
    dataset = prepare_dataset(CNMCReader(cnmc_root), SplitSpec())
    module = CellDataModule(dataset, SPEC, augmentations=[flip], num_workers=0, pipeline=pipeline)
    module.setup()
    reference = build_transform(SPEC, roi_crop=False)
    for split, flipped in (("train", True), ("val", False)):
        loader = module.train_dataloader() if split == "train" else module.eval_dataloader(split)
        loader = torch.utils.data.DataLoader(loader.dataset, batch_size=4, collate_fn=loader.collate_fn)
        images, _ = next(iter(loader))
        images = module.model_input(images, train=split == "train")
        plain = torch.stack([reference(image=read_image(path))["image"] for path in loader.dataset.paths[:4]])
        assert images.dtype == torch.float32 and images.shape == plain.shape
        assert torch.allclose(images, plain.flip(-1) if flipped else plain, atol=1e-5)


class FirstDraws(torch.utils.data.Dataset):
    """Each item: the next number of the augmentation pipeline's own random stream."""

    def __init__(self):
        self.transform = build_transform(SPEC, roi_crop=False, seed=0)

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return int(self.transform.random_generator.integers(1 << 30))


def test_loader_workers_draw_their_own_augmentations_reproducibly():
    """Each worker starts from a copy of one pipeline: without reseeding, all would flip alike."""
    def draws():
        torch.manual_seed(0)
        loader = torch.utils.data.DataLoader(FirstDraws(), batch_size=1, num_workers=2, worker_init_fn=seed_worker)
        return [int(x) for x in loader]

    first = draws()
    assert first[0] != first[1]  # items 0 and 1 come from workers 0 and 1
    assert draws() == first
