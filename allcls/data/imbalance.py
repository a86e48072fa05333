"""Ways to counter class imbalance (C-NMC has about two ALL cells for every normal one).

- ``none``: train on the data as it is.
- ``class_weights``: weight the loss by inverse class frequency (scikit-learn's "balanced").
- ``weighted_sampler``: draw training samples with probability inverse to their class frequency.
- ``oversample``: repeat randomly chosen minority-class samples until every class is as large as
  the largest (random oversampling, as one of the reproduced papers did).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from allcls.errors import AllclsError

STRATEGIES = ("none", "class_weights", "weighted_sampler", "oversample")


def check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise AllclsError(f"data.imbalance={strategy!r} is not one of {list(STRATEGIES)}.")
    return strategy


def class_counts(labels: Sequence[int], num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)


def loss_weights(labels: Sequence[int], num_classes: int) -> list[float]:
    """n_samples / (n_classes * count_c): the weights average to 1 over the samples."""
    counts = class_counts(labels, num_classes)
    return (len(labels) / (num_classes * np.maximum(counts, 1))).tolist()


def sample_weights(labels: Sequence[int], num_classes: int) -> np.ndarray:
    """Per-sample draw weights that give every class the same expected share of a batch."""
    counts = class_counts(labels, num_classes)
    return 1.0 / counts[np.asarray(labels, dtype=np.int64)]


def oversample(labels: Sequence[int], seed: int) -> np.ndarray:
    """Indices into `labels` with minority classes randomly repeated up to the majority count."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    present = np.unique(labels)
    target = max(int((labels == c).sum()) for c in present)
    indices = [np.flatnonzero(labels == c) for c in present]
    extra = [rng.choice(idx, target - len(idx), replace=True) for idx in indices]
    return np.sort(np.concatenate(indices + extra))
