"""The out-of-distribution gate: how unlike the training cells an input is, and whether it is too
unlike them to be answered.

Three views of what each member is shown and makes of it, because each alone misses cases:
- input: the Mahalanobis distance of a summary of the member's input (the resized image it is fed:
  colour means and spreads, their layout on a 4 x 4 grid, colour histograms; 78 numbers) to the
  training cells' summaries. Networks fine-tuned from ImageNet on a few hundred cells keep much of
  ImageNet's indifference to colour and texture: on the demo's model a photograph or a scanned page
  often lands among the cells in feature space (features and outputs alone rejected a quarter of
  the far probes), while no training cell looks like it;
- features: the Mahalanobis distance of the member's pooled features (what its classifier head
  sees) to the nearest class mean, with one covariance shared by the classes (Lee et al. 2018),
  shrunk towards a multiple of the identity (Ledoit-Wolf) since there are often fewer training
  cells than feature dimensions;
- outputs: the energy of its logits, -logsumexp (Liu et al. 2020): low where the network is sure of
  some class. Artefacts can make a network sure, so outputs alone are not enough.
Each raw score is standardised by its median and interquartile range on the validation cells, and
the gate's score is the mean of the members' standardised scores: an image far out of distribution
is so far on at least one view that the mean is too, while a new patient's cells, a little unusual
on one view, are not rejected for it (on the real 4-class sample the largest of the three rejected
8% of the test cells, the mean 7%; on the demo's model 4% and 3%; every far probe either way).
The statistics are fitted on the training split; the threshold is set on the validation split so
that a new in-distribution cell is rejected with probability at most `max_rejected`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import logsumexp
from sklearn.covariance import LedoitWolf

SCORES = ("input", "features", "energy")  # the raw scores of each member, in this order
GRID, BINS = 4, 8  # the input summary: colour means on a GRID x GRID layout, BINS-bin histograms per channel


# The 8-bin histogram's bin of each uint8 value v: floor(v / 255 * BINS), the top value in the last bin.
_BIN_OF_VALUE = np.minimum(np.arange(256) * BINS // 255, BINS - 1)
_VALUES = np.arange(256) / 255


def summarise_inputs(images: np.ndarray) -> np.ndarray:
    """What a member is shown, summarised (N, 78): from its uint8 input images (N, H, W, 3), each
    channel's mean and spread (of values scaled to 0..1), its means on a 4 x 4 grid (the windows of
    torch's adaptive average pooling, which overlap where the side is not a multiple of 4), and its
    8-bin histogram. Both runtimes compute it here, in numpy. Each image's 256-value histogram per
    channel, counted in one pass, gives the mean, the spread and the 8 bins exactly; the grid takes one
    more pass: a small fraction of what float arithmetic over every pixel costs."""
    images = np.asarray(images)
    n, height, width, channels = images.shape
    pixels = height * width
    offsets = (np.arange(n)[:, None, None] * channels + np.arange(channels)[None, None, :]) * 256
    counts = np.bincount((images.reshape(n, pixels, channels) + offsets).ravel(),
                         minlength=n * channels * 256).reshape(n, channels, 256).astype(np.float64)
    mean = counts @ _VALUES / pixels
    variance = (counts @ _VALUES**2 - pixels * mean**2) / max(pixels - 1, 1)
    histogram = np.stack([counts[:, :, b == _BIN_OF_VALUE].sum(axis=2) for b in range(BINS)], axis=2) / pixels
    rows = [(i * height // GRID, -(-(i + 1) * height // GRID)) for i in range(GRID)]
    columns = [(j * width // GRID, -(-(j + 1) * width // GRID)) for j in range(GRID)]
    by_rows = np.stack([images[:, top:bottom].sum(axis=1, dtype=np.uint32) for top, bottom in rows], axis=1)
    sums = np.stack([by_rows[:, :, left:right].sum(axis=2) for left, right in columns], axis=2)  # (N, 4, 4, 3)
    areas = np.array([[(bottom - top) * (right - left) for left, right in columns] for top, bottom in rows],
                     dtype=np.float64)
    grid = (sums / (areas[None, :, :, None] * 255)).transpose(0, 3, 1, 2).reshape(n, -1)  # channel-major, as torch
    return np.concatenate([mean, np.sqrt(np.maximum(variance, 0)), grid, histogram.reshape(n, -1)], axis=1)


@dataclass(frozen=True)
class Gaussian:
    """One Gaussian per class (means (C, D)) sharing a precision matrix (D, D), shrunk (Ledoit-Wolf)."""

    means: np.ndarray
    precision: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray, labels: np.ndarray | None = None) -> Gaussian:
        labels = np.zeros(len(values), dtype=np.int64) if labels is None else labels
        classes = np.unique(labels)
        means = np.stack([values[labels == c].mean(axis=0) for c in classes])
        residuals = values - means[np.searchsorted(classes, labels)]
        precision = LedoitWolf(assume_centered=True).fit(residuals).precision_
        return cls(means.astype(np.float32), precision.astype(np.float32))

    def distance(self, values: np.ndarray) -> np.ndarray:
        """The squared Mahalanobis distance to the nearest mean (N,)."""
        f = values.astype(np.float64)
        precision, means = self.precision.astype(np.float64), self.means.astype(np.float64)
        projected = f @ precision
        own = np.einsum("nd,nd->n", projected, f)
        cross = projected @ means.T
        centre = np.einsum("cd,cd->c", means @ precision, means)
        return np.maximum(own[:, None] - 2 * cross + centre[None], 0).min(axis=1)


@dataclass(frozen=True)
class MemberStatistics:
    """A member's training cells: their input summaries (one Gaussian) and features (one per class)."""

    inputs: Gaussian
    features: Gaussian

    @classmethod
    def fit(cls, inputs: np.ndarray, features: np.ndarray, labels: np.ndarray) -> MemberStatistics:
        return cls(Gaussian.fit(inputs), Gaussian.fit(features, labels))


def raw_scores(statistics: list[MemberStatistics], inputs: list[np.ndarray], features: list[np.ndarray],
               logits: list[np.ndarray]) -> np.ndarray:
    """(members, N, 3): each member's input distance, feature distance and logit energy, higher =
    more unusual."""
    return np.stack([np.stack([s.inputs.distance(i), s.features.distance(f),
                               -logsumexp(z.astype(np.float64), axis=1)], axis=1)
                     for s, i, f, z in zip(statistics, inputs, features, logits, strict=True)])


@dataclass(frozen=True)
class OodGate:
    """Fitted statistics per member, the validation median and spread of each raw score (members, 3),
    and the threshold on the combined score."""

    statistics: list[MemberStatistics]
    centre: np.ndarray
    spread: np.ndarray
    threshold: float
    max_rejected: float

    @classmethod
    def fit(cls, train: tuple[list[np.ndarray], list[np.ndarray], np.ndarray],
            validation: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]], max_rejected: float) -> OodGate:
        """From each member's training input summaries and features and the training labels, and
        its validation input summaries, features and logits."""
        inputs, features, labels = train
        statistics = [MemberStatistics.fit(i, f, labels) for i, f in zip(inputs, features, strict=True)]
        raw = raw_scores(statistics, *validation)
        low, centre, high = np.percentile(raw, [25, 50, 75], axis=1)
        spread = np.maximum(high - low, 1e-6 * np.maximum(np.abs(centre), 1.0))
        return cls(statistics, centre, spread, rejection_threshold(combine(raw, centre, spread), max_rejected),
                   max_rejected)

    def scores(self, inputs: list[np.ndarray], features: list[np.ndarray], logits: list[np.ndarray]) -> np.ndarray:
        """The combined score of each image (N,): above `threshold` it is out of distribution."""
        return combine(raw_scores(self.statistics, inputs, features, logits), self.centre, self.spread)

    def rejects(self, scores: np.ndarray) -> np.ndarray:
        return scores > self.threshold

    def save(self, path: Path) -> Path:
        arrays = {"centre": self.centre, "spread": self.spread, "threshold": np.array(self.threshold),
                  "max_rejected": np.array(self.max_rejected)}
        for m, s in enumerate(self.statistics):
            for part, gaussian in (("inputs", s.inputs), ("features", s.features)):
                arrays[f"{part}_means_{m}"], arrays[f"{part}_precision_{m}"] = gaussian.means, gaussian.precision
        np.savez_compressed(path, allow_pickle=False, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> OodGate:
        with np.load(path) as arrays:
            members = len(arrays["centre"])
            statistics = [MemberStatistics(*(Gaussian(arrays[f"{part}_means_{m}"], arrays[f"{part}_precision_{m}"])
                                             for part in ("inputs", "features"))) for m in range(members)]
            return cls(statistics, arrays["centre"], arrays["spread"], float(arrays["threshold"]),
                       float(arrays["max_rejected"]))


def rejection_threshold(validation: np.ndarray, max_rejected: float) -> float:
    """The validation score of rank ceil((n + 1)(1 - max_rejected)) (a conformal p-value's cut): a
    new in-distribution cell, exchangeable with the n validation cells, is rejected with probability
    at most `max_rejected`. With too few validation cells for that rank, the largest score."""
    ordered = np.sort(validation)
    rank = int(np.ceil((len(ordered) + 1) * (1 - max_rejected)))
    return float(ordered[min(rank, len(ordered)) - 1])


def combine(raw: np.ndarray, centre: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """(members, N, 3) raw scores -> (N,): standardised, averaged over members and views."""
    standardised = (raw - centre[:, None, :]) / spread[:, None, :]
    return standardised.mean(axis=(0, 2))
