"""The deterministic preprocessing every image goes through, for training and inference alike:
[crop to the cell] -> resize to the backbone's input size (uint8, what loaders, the packed cache
and the served model carry) -> normalised float input on the device (allcls.data.normalisation, or
inside an exported ONNX graph). Neither albumentations nor torch here: the served model and the page
load this without the training stack, and a model served by ONNX Runtime without torch."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class InputSpec:
    """What the backbone expects: square input side, and normalisation mean/std (RGB, 0..1 scale)."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def foreground_box(image: np.ndarray, threshold: int = 10, margin: float = 0.04) -> tuple[int, int, int, int] | None:
    """The box (top, left, bottom, right) of the pixels with any channel above `threshold`, grown by
    `margin` of its longer side and kept inside the image; None for an all-black image."""
    # Found on the (H, W x 3) view of the bytes: 35x faster than image.max(axis=2), a strided
    # reduction that cost more than the decode.
    height, width, channels = image.shape
    flat = np.ascontiguousarray(image).reshape(height, width * channels)
    x, top, span, rows = cv2.boundingRect(cv2.threshold(flat, threshold, 255, cv2.THRESH_BINARY)[1])
    if span == 0:
        return None
    bottom, left, right = top + rows, x // channels, (x + span - 1) // channels + 1
    pad = int(round(max(bottom - top, right - left) * margin))
    return max(top - pad, 0), max(left - pad, 0), min(bottom + pad, height), min(right + pad, width)


def foreground_square(image: np.ndarray, threshold: int = 10, margin: float = 0.04) -> tuple[int, int, int] | None:
    """Where the square that `crop_to_foreground` returns lies on the image: (top, left, side), in
    the image's coordinates (it may reach past the edges); None for an all-black image, which is not
    cropped. What lays a Grad-CAM map back onto the uploaded image."""
    box = foreground_box(image, threshold, margin)
    if box is None:
        return None
    top, left, bottom, right = box
    side = max(bottom - top, right - left)
    return top - (side - (bottom - top)) // 2, left - (side - (right - left)) // 2, side


def crop_to_foreground(image: np.ndarray, threshold: int = 10, margin: float = 0.04) -> np.ndarray:
    """The cell's box (`foreground_box`), padded with black to a square."""
    box = foreground_box(image, threshold, margin)
    if box is None:  # an all-black image: nothing to crop to
        return image
    top, left, bottom, right = box
    crop = image[top:bottom, left:right]
    height, width = crop.shape[:2]
    side = max(height, width)
    dy, dx = side - height, side - width
    return cv2.copyMakeBorder(crop, dy // 2, dy - dy // 2, dx // 2, dx - dx // 2, cv2.BORDER_CONSTANT, value=0)


def resize_antialiased(image: np.ndarray, size: int) -> np.ndarray:
    height, width = image.shape[:2]
    factor = min(height, width) // size
    if factor >= 2:
        image = image[: height - height % factor, : width - width % factor]
        image = cv2.resize(image, (image.shape[1] // factor, image.shape[0] // factor), interpolation=cv2.INTER_AREA)
    if image.shape[:2] == (size, size):
        return image
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


def preprocess(image: np.ndarray, spec: InputSpec, roi_crop: bool) -> np.ndarray:
    """`preprocessing` as one call, without albumentations' per-call bookkeeping: H x W x 3 uint8
    in, size x size x 3 uint8 out."""
    if roi_crop:
        image = crop_to_foreground(image)
    return resize_antialiased(image, spec.size)

