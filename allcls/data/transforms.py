"""Preprocessing and augmentation pipelines (albumentations), built from the config.

Every pipeline is: [region-of-interest crop] -> resize to the backbone's input size ->
[train-time augmentations] -> normalise with the backbone's mean/std -> CHW float tensor.
Training splits the pipeline after the resize: `preprocess` makes the uint8 image that loaders
(and the packed cache) carry, and augmentations that have a batch form run on the device
(allcls.data.batch_transforms).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2


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


def crop_to_foreground(image: np.ndarray, threshold: int = 10, margin: float = 0.04) -> np.ndarray:
    # The box of the pixels with any channel above threshold, found on the (H, W x 3) view of the
    # bytes: 35x faster than image.max(axis=2), a strided reduction that cost more than the decode.
    height, width, channels = image.shape
    flat = np.ascontiguousarray(image).reshape(height, width * channels)
    x, top, span, rows = cv2.boundingRect(cv2.threshold(flat, threshold, 255, cv2.THRESH_BINARY)[1])
    if span == 0:  # an all-black image: nothing to crop to
        return image
    bottom, left, right = top + rows, x // channels, (x + span - 1) // channels + 1
    side = max(bottom - top, right - left)
    pad = int(round(side * margin))
    crop = image[max(top - pad, 0):bottom + pad, max(left - pad, 0):right + pad]
    height, width = crop.shape[:2]
    side = max(height, width)
    dy, dx = side - height, side - width
    return cv2.copyMakeBorder(crop, dy // 2, dy - dy // 2, dx // 2, dx - dx // 2, cv2.BORDER_CONSTANT, value=0)


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


def resize_antialiased(image: np.ndarray, size: int) -> np.ndarray:
    height, width = image.shape[:2]
    factor = min(height, width) // size
    if factor >= 2:
        image = image[: height - height % factor, : width - width % factor]
        image = cv2.resize(image, (image.shape[1] // factor, image.shape[0] // factor), interpolation=cv2.INTER_AREA)
    if image.shape[:2] == (size, size):
        return image
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


@dataclass(frozen=True)
class InputSpec:
    """What the backbone expects: square input side, and normalisation mean/std (RGB, 0..1 scale)."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def preprocessing(spec: InputSpec, roi_crop: bool) -> list[A.BasicTransform]:
    """The deterministic part that every split shares, up to the resize (no normalisation)."""
    steps: list[A.BasicTransform] = [CropToForeground()] if roi_crop else []
    steps.append(ResizeAntialiased(spec.size))
    return steps


def preprocess(image: np.ndarray, spec: InputSpec, roi_crop: bool) -> np.ndarray:
    """`preprocessing` as one call, without albumentations' per-call bookkeeping: H x W x 3 uint8
    in, size x size x 3 uint8 out."""
    if roi_crop:
        image = crop_to_foreground(image)
    return resize_antialiased(image, spec.size)


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
