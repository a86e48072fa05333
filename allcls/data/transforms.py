"""Preprocessing and augmentation pipelines (albumentations), built from the config.

Every pipeline is: [region-of-interest crop] -> resize to the backbone's input size ->
[train-time augmentations] -> normalise with the backbone's mean/std -> CHW float tensor.
Training splits the pipeline after the resize: `preprocess` makes the uint8 image that loaders
(and the packed cache) carry, and augmentations that have a batch form run on the device
(allcls.data.batch_transforms).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import albumentations as A
import numpy as np
from albumentations.pytorch import ToTensorV2

from allcls.data.preprocessing import InputSpec, crop_to_foreground, resize_antialiased


class CropToForeground(A.ImageOnlyTransform):
    """Crop to the box around the non-black pixels, then pad that box to a square with black.

    C-NMC cells are segmented onto a wide black border; cropping it keeps the cell's pixels when
    the image is shrunk to the input size (the region-of-interest crop of the C-NMC papers).
    Padding to a square keeps the cell's aspect ratio through the resize.
    """

    def __init__(self, threshold: int = 10, margin: float = 0.04, p: float = 1.0):
        super().__init__(p=p)
        self.threshold = threshold
        self.margin = margin

    def apply(self, img: np.ndarray, **params) -> np.ndarray:
        return crop_to_foreground(img, self.threshold, self.margin)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("threshold", "margin")


class ResizeAntialiased(A.ImageOnlyTransform):
    """Resize to size x size, shrinking without aliasing, fast.

    OpenCV's area interpolation is exact but slow for a fractional factor (450 -> 224 px costs
    more than decoding the BMP). A box filter by a whole factor is a fast path, so we shrink by
    the largest whole factor first (450 -> 225, after trimming at most factor-1 edge pixels so it
    divides) and finish with bilinear, which is alias-free for the remaining factor below 2.
    """

    def __init__(self, size: int, p: float = 1.0):
        super().__init__(p=p)
        self.size = size

    def apply(self, img: np.ndarray, **params) -> np.ndarray:
        return resize_antialiased(img, self.size)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("size",)


def preprocessing(spec: InputSpec, roi_crop: bool) -> list[A.BasicTransform]:
    """The deterministic part that every split shares, up to the resize (no normalisation)."""
    steps: list[A.BasicTransform] = [CropToForeground()] if roi_crop else []
    steps.append(ResizeAntialiased(spec.size))
    return steps


def build_transform(spec: InputSpec, roi_crop: bool, augmentations: Sequence[A.BasicTransform] = (),
                    resized: bool = False, seed: int | None = None) -> A.Compose:
    """The whole pipeline for one split. `augmentations` is empty for val/test/predict.
    `resized=True` when the input already went through `preprocessing` (the decoded-image cache).
    `seed` starts the augmentations' random stream: albumentations keeps its own and ignores the
    global seeds (loader workers reseed it: allcls.data.datamodule.seed_worker)."""
    steps = [] if resized else preprocessing(spec, roi_crop)
    steps += list(augmentations)
    steps += [A.Normalize(mean=spec.mean, std=spec.std), ToTensorV2()]
    pipeline = A.Compose(steps)
    if seed is not None:
        seed_pipeline(pipeline, seed)
    return pipeline


def seed_pipeline(pipeline: A.Compose, seed: int) -> None:
    """Start a pipeline's random stream, one stream that its transforms draw from in turn.

    Not `Compose(seed=...)` nor `set_random_seed`: albumentations 2 gives every transform its own
    generator seeded with the same number, so all of them draw the same values. HorizontalFlip and
    VerticalFlip (both p=0.5) then flipped together or not at all, and the `basic` preset showed a
    cell in 4 of its 8 orientations, never mirrored (tests/test_input_pipeline.py counts them).
    """
    pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
