"""Grad-CAM in an evaluation: which samples of the evaluated split to explain, and the grid of
their maps laid over the images (the maps themselves come from allcls.inference.gradcam)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from allcls.errors import AllclsError
from allcls.figures import save_figure, subplots
from allcls.inference.gradcam import overlay


@dataclass(frozen=True)
class CamGrid:
    """Explained images: RGB images (N, H, W, 3) and their maps (N, H, W), both in [0, 1], a
    caption per image and a title."""

    images: np.ndarray
    maps: np.ndarray
    captions: list[str]
    title: str


def overlay_grid(grid: CamGrid, path: Path, columns: int = 4) -> Path:
    """A grid of images with their Grad-CAM maps laid over them, one caption per tile."""
    rows = int(np.ceil(len(grid.images) / columns))
    fig, axes = subplots(rows, columns, figsize=(2.6 * columns, 2.9 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    # the last row's spare tiles stay empty; the images, maps and captions are one per tile shown
    for ax, image, cam_map, caption in zip(axes.ravel(), grid.images, grid.maps, grid.captions, strict=False):
        ax.imshow(overlay(image, cam_map))
        ax.set_title(caption, fontsize=8)
    fig.suptitle(grid.title)
    return save_figure(fig, path, dpi=110)


def choose_samples(labels: np.ndarray, predicted: np.ndarray, per_class: int, seed: int,
                   sample_ids: Sequence[str] = (), all_ids: Sequence[str] = ()) -> np.ndarray:
    """Indices to explain: the listed `sample_ids`, else `per_class` random samples of each true
    class, misclassified ones first (up to half of each class's tiles)."""
    if len(sample_ids):
        position = {sid: i for i, sid in enumerate(all_ids)}
        missing = [sid for sid in sample_ids if sid not in position]
        if missing:
            raise AllclsError(f"gradcam.sample_ids {missing[:3]} are not in the evaluated split.")
        return np.array([position[sid] for sid in sample_ids])
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        wrong = rng.permutation(members[predicted[members] != c])[: max(1, per_class // 2)]
        right = rng.permutation(np.setdiff1d(members, wrong))[: per_class - len(wrong)]
        chosen.extend(np.concatenate([wrong, right])[:per_class])
    return np.array(chosen, dtype=np.int64)
