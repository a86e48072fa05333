"""Ways to counter class imbalance (C-NMC has about two ALL cells for every normal one).

- ``none``: train on the data as it is.
- ``class_weights``: weight the loss by inverse class frequency (scikit-learn's "balanced").
- ``weighted_sampler``: draw training samples with probability inverse to their class frequency.
- ``oversample``: repeat randomly chosen minority-class samples until every class is as large as
  the largest (random oversampling, as one of the reproduced papers did).
- ``feature_smote``: SMOTE in the network's feature space, batch by batch (the model does it:
  `feature_smote` below). SMOTE on raw pixels, as one reproduced paper did, blends two cells into
  a ghost of both; between two feature vectors of one class it makes a plausible one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import torch

from allcls.errors import AllclsError

Strategy = Literal["none", "class_weights", "weighted_sampler", "oversample", "feature_smote"]
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)


def check_strategy(strategy: str) -> Strategy:
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
    array = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    present = np.unique(array)
    target = max(int((array == c).sum()) for c in present)
    indices = [np.flatnonzero(array == c) for c in present]
    extra = [rng.choice(idx, target - len(idx), replace=True) for idx in indices]
    return np.sort(np.concatenate(indices + extra))


def feature_smote(features: torch.Tensor, labels: torch.Tensor, num_classes: int, neighbours: int = 5,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic feature vectors (and their labels) that bring every class of a batch up to its
    largest: each one lies at a random point between a sample and one of its `neighbours` nearest
    same-class samples (Chawla et al. 2002), in the feature space the classifier head sees. A class
    with fewer than two samples in the batch gets none. Gradients flow into the features."""
    counts = torch.bincount(labels, minlength=num_classes)
    made, made_labels = [], []
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        missing = int(counts.max() - counts[c])
        if missing == 0 or len(members) < 2:
            continue
        own = features[members]
        distances = torch.cdist(own.detach(), own.detach())
        distances.fill_diagonal_(float("inf"))
        nearest = distances.topk(min(neighbours, len(members) - 1), largest=False).indices  # (n_c, k)
        origin = torch.randint(len(members), (missing,), generator=generator, device="cpu").to(features.device)
        pick = torch.randint(nearest.shape[1], (missing,), generator=generator, device="cpu").to(features.device)
        partner = nearest[origin, pick]
        step = torch.rand((missing, 1), generator=generator, device="cpu").to(features.device)
        made.append(own[origin] + step * (own[partner] - own[origin]))
        made_labels.append(torch.full((missing,), c, dtype=labels.dtype, device=labels.device))
    if not made:
        return features[:0], labels[:0]
    return torch.cat(made), torch.cat(made_labels)
