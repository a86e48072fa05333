"""The C-NMC 2019 winner's neighbourhood correction (Pan et al.), as an opt-in, TRANSDUCTIVE step.

Each cell's prediction is pulled towards those of its most similar cells in the same evaluated
batch, similarity being measured in the trained network's feature space. Cells of one patient
share stain and morphology, so they tend to be each other's neighbours, and a patient's cells
mostly share a class: the vote corrects the odd cell out. It needs the whole batch at once, so it
is not how a single uploaded image is classified, and its numbers are reported apart from the
plain ones, named transductive wherever they appear.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from allcls.errors import AllclsError


@dataclass(frozen=True)
class NeighbourCorrection:
    """`transductive_correction` in conf/evaluate.yaml.

    neighbours: how many most similar cells of the batch vote (cosine similarity of features).
    weighting: `similarity` (each vote weighted by its cosine similarity, negatives count 0) or
    `uniform`. self_weight: the cell's own share of its corrected prediction (0: neighbours only).
    """

    enabled: bool = False
    neighbours: int = 10
    weighting: Literal["similarity", "uniform"] = "similarity"
    self_weight: float = 0.5

    def __post_init__(self):
        if self.neighbours < 1:
            raise AllclsError(f"transductive_correction.neighbours={self.neighbours} must be 1 or more.")
        if not 0 <= self.self_weight < 1:
            raise AllclsError(f"transductive_correction.self_weight={self.self_weight} must be in [0, 1).")

    @property
    def description(self) -> str:
        return f"neighbour correction (k={self.neighbours}, {self.weighting}, self {self.self_weight:g})"


def neighbour_correction(probabilities: np.ndarray, features: Sequence[np.ndarray], settings: NeighbourCorrection,
                         feature_weights: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """Corrected probabilities (N, C): self_weight x the cell's own + the rest x its neighbours'
    weighted mean. `features`: one (N, D) array per model (an ensemble's members), each compared by
    cosine similarity and averaged with `feature_weights`. Refuses a batch too small to have the
    neighbours asked for."""
    count, k = len(probabilities), settings.neighbours
    if count <= k:
        raise AllclsError(f"The transductive neighbour correction needs more than {k} images in the evaluated "
                          f"batch to find {k} neighbours of each; it has {count}. Evaluate a larger split or lower "
                          "transductive_correction.neighbours.")
    weights = np.full(len(features), 1.0 / len(features)) if feature_weights is None else np.asarray(feature_weights)
    similarity = np.zeros((count, count))
    for member, weight in zip(features, weights / weights.sum(), strict=True):
        unit = member / np.maximum(np.linalg.norm(member, axis=1, keepdims=True), 1e-12)
        similarity += weight * (unit @ unit.T)
    np.fill_diagonal(similarity, -np.inf)  # a cell is not its own neighbour
    nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    votes = (np.clip(np.take_along_axis(similarity, nearest, axis=1), 0, None) if settings.weighting == "similarity"
             else np.ones(nearest.shape))
    totals = votes.sum(axis=1, keepdims=True)
    votes = np.divide(votes, totals, out=np.full_like(votes, 1.0 / k), where=totals > 0)  # all dissimilar: uniform
    neighbourhood = np.einsum("nk,nkc->nc", votes, probabilities[nearest])
    corrected = settings.self_weight * probabilities + (1 - settings.self_weight) * neighbourhood
    return corrected / corrected.sum(axis=1, keepdims=True)
