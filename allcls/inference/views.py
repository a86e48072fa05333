"""Class probabilities for a whole split, in one single-device pass (every sample exactly once),
optionally averaged over test-time augmentation views."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from allcls.errors import AllclsError

# Views of a batch (N, C, H, W) for test-time augmentation: cells have no orientation.
TTA_VIEWS = {
    "identity": lambda x: x,
    "hflip": lambda x: x.flip(-1),
    "vflip": lambda x: x.flip(-2),
    "rot90": lambda x: torch.rot90(x, 1, (-2, -1)),
    "rot180": lambda x: torch.rot90(x, 2, (-2, -1)),
    "rot270": lambda x: torch.rot90(x, 3, (-2, -1)),
}


def check_views(views: Sequence[str]) -> list[str]:
    unknown = [v for v in views if v not in TTA_VIEWS]
    if unknown:
        raise AllclsError(f"Unknown test-time augmentation view(s) {unknown}: use {sorted(TTA_VIEWS)}.")
    return list(views)


def view_probabilities(model: nn.Module, images: torch.Tensor, views: Sequence[str]) -> torch.Tensor:
    """Softmax probabilities (float64) of a batch, averaged over the views (call in eval mode)."""
    return sum(model(TTA_VIEWS[view](images)).double().softmax(dim=1) for view in views) / len(views)


@torch.inference_mode()
def predict_probabilities(model: nn.Module, loader: DataLoader, device: torch.device | str = "cpu",
                          views: Sequence[str] = ("identity",),
                          model_input: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """Softmax probabilities (samples x classes, float64, rows summing to 1) in the loader's order,
    averaged over the test-time augmentation `views` (default: the image as it is). `model_input`
    turns a batch, on the device, into the network's input (the datamodule's uint8 batches)."""
    views = check_views(views)
    was_training = model.training
    model.eval().to(device)
    chunks = []
    for images, *_ in loader:
        images = images.to(device, non_blocking=True)
        if model_input is not None:
            images = model_input(images)
        chunks.append(view_probabilities(model, images, views).cpu().numpy())
    model.train(was_training)
    return np.concatenate(chunks) if chunks else np.zeros((0, 0))
