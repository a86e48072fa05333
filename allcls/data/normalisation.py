"""The last step of preprocessing, on the device: uint8 images as loaders carry them -> the
network's normalised float input. Training's loaders, the predictor and the ONNX export (which puts
this same arithmetic inside the graph) all normalise here."""

from __future__ import annotations

import numpy as np
import torch

from allcls.data.preprocessing import InputSpec


class Normalisation:
    """uint8 images (N, H, W, C), as loaders carry them, -> the network's float input (N, C, H, W),
    scaled to 0..1 and normalised with the backbone's mean and std, on the images' device."""

    def __init__(self, spec: InputSpec):
        std = np.asarray(spec.std, np.float64)
        self.scale = torch.tensor(1 / (255 * std), dtype=torch.float32).view(1, 3, 1, 1)
        self.shift = torch.tensor(-np.asarray(spec.mean) / std, dtype=torch.float32).view(1, 3, 1, 1)

    @staticmethod
    def channels_first(images: torch.Tensor) -> torch.Tensor:
        """A uint8 NHWC batch as a new NCHW one: what augmentations rearrange in place. Contiguous
        planes: the per-channel arithmetic below then runs at memory speed on a CPU too (on a
        channels-last view it was 2-4x slower); a channels-last model asks for its layout itself."""
        return images.permute(0, 3, 1, 2).contiguous()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """`images`: a uint8 NCHW batch (`channels_first`)."""
        if self.scale.device != images.device:
            self.scale, self.shift = self.scale.to(images.device), self.shift.to(images.device)
        return images.float().mul_(self.scale).add_(self.shift)
