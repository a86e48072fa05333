"""Grad-CAM: where a model looks when it predicts a class (pytorch-grad-cam, `grad-cam` on PyPI).

For any timm backbone the target layer is the last stage that timm reports in `feature_info`
(the last convolution for models without it, like custom_cnn). For an ensemble (a Predictor of
several members), each member's map is computed at its own input size, resized to a common size
and combined with the ensemble's weights. Maps are in [0, 1] and have the spatial size of the
image they explain.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from allcls.inference.predictor import Predictor
from allcls.progress import progress


def target_layer(model: nn.Module) -> nn.Module:
    info = getattr(model, "feature_info", None)
    if info:
        return model.get_submodule(info[-1]["module"])
    convolutions = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convolutions:
        raise ValueError(f"{type(model).__name__} has no convolution to explain with Grad-CAM")
    return convolutions[-1]


def gradcam(model: nn.Module, images: torch.Tensor, targets: Sequence[int]) -> np.ndarray:
    """Grad-CAM maps (N, H, W) in [0, 1] of `images` (N, 3, H, W) for the classes `targets`."""
    model.eval()
    with GradCAM(model=model, target_layers=[target_layer(model)]) as cam:
        maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    return np.asarray(maps, dtype=np.float32)


def explain(predictor: Predictor, images: Sequence[str | np.ndarray], targets: Sequence[int]
            ) -> tuple[np.ndarray, np.ndarray]:
    """(RGB images as the first member sees them, Grad-CAM maps of the `targets` classes): every
    member's maps, combined with the predictor's weights at the first member's input size."""
    display, maps = member_maps(predictor, images, targets)
    return display, combine_maps(maps, predictor.weights, display.shape[1])


def member_maps(predictor: Predictor, images: Sequence[str | np.ndarray], targets: Sequence[int], show: bool = True
                ) -> tuple[np.ndarray, list[np.ndarray]]:
    """(RGB images as the first member sees them, each member's Grad-CAM maps at its own input size)."""
    maps, display = [], None
    for index in progress(range(len(predictor.members)), desc=f"Grad-CAM of {len(images)} images", unit="model",
                          show=show):
        shown, inputs = predictor.inputs(images, index)
        maps.append(gradcam(predictor.networks[index], inputs, targets))
        if display is None:
            display = shown
    assert display is not None  # a Predictor has at least one member
    return display, maps


def overlay(image: np.ndarray, cam_map: np.ndarray) -> np.ndarray:
    """One RGB image in [0, 1] with its map laid over it (uint8 RGB)."""
    if cam_map.shape != image.shape[:2]:
        cam_map = cv2.resize(cam_map, image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    return show_cam_on_image(image.astype(np.float32), cam_map, use_rgb=True)


def combine_maps(maps: Sequence[np.ndarray], weights: Sequence[float] | np.ndarray, size: int) -> np.ndarray:
    """Weighted sum of members' maps (each (N, h, w)), resized to size x size, rescaled to [0, 1]."""
    total = np.zeros((maps[0].shape[0], size, size), np.float32)
    for member_maps, weight in zip(maps, weights, strict=True):
        total += weight * np.stack([cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR) for m in member_maps])
    peak = total.reshape(len(total), -1).max(axis=1)[:, None, None]
    return np.divide(total, peak, out=np.zeros_like(total), where=peak > 0)


