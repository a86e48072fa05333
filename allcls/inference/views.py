"""Test-time augmentation: views of a batch that a cell classifier should answer alike (cells have
no orientation), and a network's probabilities averaged over them. Evaluation, packaging, batch
prediction and the page all take their views from here. Torch is not imported here: a model served
by ONNX Runtime takes its views of uint8 (N, H, W, 3) arrays from `ARRAY_VIEWS`, the same turns as
`TTA_VIEWS` makes of (N, C, H, W) tensors (a test holds them together)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from allcls.errors import AllclsError

if TYPE_CHECKING:
    import torch
    from torch import nn

# Views of a batch (N, C, H, W) of tensors (their own methods: no torch import needed here).
TTA_VIEWS: dict[str, Callable[[Any], Any]] = {
    "identity": lambda x: x,
    "hflip": lambda x: x.flip(-1),
    "vflip": lambda x: x.flip(-2),
    "rot90": lambda x: x.rot90(1, (-2, -1)),
    "rot180": lambda x: x.rot90(2, (-2, -1)),
    "rot270": lambda x: x.rot90(3, (-2, -1)),
}
# The same views of a batch of images (N, H, W, 3) as arrays.
ARRAY_VIEWS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda x: x,
    "hflip": lambda x: x[:, :, ::-1],
    "vflip": lambda x: x[:, ::-1],
    "rot90": lambda x: np.rot90(x, 1, (1, 2)),
    "rot180": lambda x: np.rot90(x, 2, (1, 2)),
    "rot270": lambda x: np.rot90(x, 3, (1, 2)),
}
PLAIN = ("identity",)
ALL_VIEWS = tuple(TTA_VIEWS)


def views_for(tta: bool) -> tuple[str, ...]:
    """Every view with test-time augmentation, the image as it is without."""
    return ALL_VIEWS if tta else PLAIN


def check_views(views: Sequence[str] | None) -> list[str]:
    """The views named (None: every view), refusing an unknown one by name."""
    if views is None:
        return list(ALL_VIEWS)
    unknown = [v for v in views if v not in TTA_VIEWS]
    if unknown:
        raise AllclsError(f"Unknown test-time augmentation view(s) {unknown}: use {sorted(TTA_VIEWS)}.")
    return list(views)


def view_probabilities(model: nn.Module, images: torch.Tensor, views: Sequence[str]) -> torch.Tensor:
    """Softmax probabilities (float64) of a batch, averaged over the views (call in eval mode)."""
    per_view = [model(TTA_VIEWS[view](images)).double().softmax(dim=1) for view in views]
    return sum(per_view[1:], per_view[0]) / len(per_view)
