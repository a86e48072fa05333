"""The out-of-distribution gate: how unlike the training cells an input is, and whether it is too
unlike them to be answered.

Two views of each member's answer, because either alone misses cases:
- features: the Mahalanobis distance of the member's pooled features (what its classifier head
  sees) to the nearest class mean, with one covariance shared by the classes (Lee et al. 2018),
  shrunk towards a multiple of the identity (Ledoit-Wolf) since there are often fewer training
  cells than feature dimensions;
- outputs: the energy of its logits, -logsumexp (Liu et al. 2020): low where the network is sure of
  some class. Artefacts can make a network sure, so outputs alone are not enough; a cell-like image
  far from every class mean may still get a confident softmax.
Each raw score is standardised by its median and interquartile range on the validation cells, the
members' standardised scores are averaged, and the gate's score is the larger of the two averages.
The statistics are fitted on the training split; the threshold is the validation quantile that
rejects at most `max_rejected` of the in-distribution validation cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import logsumexp
from sklearn.covariance import LedoitWolf

SCORES = ("features", "energy")  # the two raw scores of each member, in this order


@dataclass(frozen=True)
class MemberStatistics:
    """A member's training features as class means (C, D) and the shared precision matrix (D, D)."""

    means: np.ndarray
    precision: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray) -> MemberStatistics:
        classes = np.unique(labels)
        means = np.zeros((int(labels.max()) + 1, features.shape[1]))
        for c in classes:
            means[c] = features[labels == c].mean(axis=0)
        residuals = features - means[labels]
        precision = LedoitWolf(assume_centered=True).fit(residuals).precision_
        return cls(means[classes].astype(np.float32), precision.astype(np.float32))

    def distance(self, features: np.ndarray) -> np.ndarray:
        """The squared Mahalanobis distance to the nearest class mean (N,)."""
        f = features.astype(np.float64)
        precision, means = self.precision.astype(np.float64), self.means.astype(np.float64)
        projected = f @ precision
        own = np.einsum("nd,nd->n", projected, f)
        cross = projected @ means.T
        centre = np.einsum("cd,cd->c", means @ precision, means)
        return np.maximum(own[:, None] - 2 * cross + centre[None], 0).min(axis=1)


def raw_scores(statistics: list[MemberStatistics], features: list[np.ndarray], logits: list[np.ndarray]
               ) -> np.ndarray:
    """(members, N, 2): each member's feature distance and logit energy, higher = more unusual."""
    return np.stack([np.stack([s.distance(f), -logsumexp(z.astype(np.float64), axis=1)], axis=1)
                     for s, f, z in zip(statistics, features, logits, strict=True)])


@dataclass(frozen=True)
class OodGate:
    """Fitted statistics per member, the validation median and spread of each raw score (members, 2),
    and the threshold on the combined score."""

    statistics: list[MemberStatistics]
    centre: np.ndarray
    spread: np.ndarray
    threshold: float
    max_rejected: float

    @classmethod
    def fit(cls, train: tuple[list[np.ndarray], list[np.ndarray], np.ndarray],
            validation: tuple[list[np.ndarray], list[np.ndarray]], max_rejected: float) -> OodGate:
        """From each member's training features, logits (unused) and labels, and its validation
        features and logits."""
        features, _, labels = train
        statistics = [MemberStatistics.fit(f, labels) for f in features]
        raw = raw_scores(statistics, *validation)
        low, centre, high = np.percentile(raw, [25, 50, 75], axis=1)
        spread = np.maximum(high - low, 1e-6 * np.maximum(np.abs(centre), 1.0))
        combined = combine(raw, centre, spread)
        threshold = float(np.quantile(combined, 1 - max_rejected, method="higher"))
        return cls(statistics, centre, spread, threshold, max_rejected)

    def scores(self, features: list[np.ndarray], logits: list[np.ndarray]) -> np.ndarray:
        """The combined score of each image (N,): above `threshold` it is out of distribution."""
        return combine(raw_scores(self.statistics, features, logits), self.centre, self.spread)

    def rejects(self, scores: np.ndarray) -> np.ndarray:
        return scores > self.threshold

    def save(self, path: Path) -> Path:
        arrays = {"centre": self.centre, "spread": self.spread, "threshold": np.array(self.threshold),
                  "max_rejected": np.array(self.max_rejected)}
        for m, s in enumerate(self.statistics):
            arrays[f"means_{m}"], arrays[f"precision_{m}"] = s.means, s.precision
        np.savez_compressed(path, allow_pickle=False, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> OodGate:
        with np.load(path) as arrays:
            members = len(arrays["centre"])
            statistics = [MemberStatistics(arrays[f"means_{m}"], arrays[f"precision_{m}"]) for m in range(members)]
            return cls(statistics, arrays["centre"], arrays["spread"], float(arrays["threshold"]),
                       float(arrays["max_rejected"]))


def combine(raw: np.ndarray, centre: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """(members, N, 2) raw scores -> (N,): standardised, averaged over members, the larger of the two."""
    standardised = (raw - centre[:, None, :]) / spread[:, None, :]
    return standardised.mean(axis=0).max(axis=1)
