"""Prediction sets that hold the true class with a chosen probability (split conformal prediction
with the least-ambiguous set-valued classifier's score: Sadinle, Lei and Wasserman 2019).

A cell's score is one minus the probability of its true class. The threshold is the score quantile
of the validation cells that gives the chosen coverage; a new cell's set is every class whose
probability is at least one minus the threshold (and its top class always). This gives the smallest
sets on average, and, unlike adaptive prediction sets without randomisation, sets that still say
something with two classes: an uncertain cell gets both, a clear one its class alone. Cells of one
patient are not independent: where subjects are known, each validation subject counts once (its
cells share its weight), so a patient with many cells does not set the threshold alone. A set of
more than one class means the model cannot tell, at that coverage: the cell should go to a human.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from allcls.metrics.bootstrap import bootstrap_multiplicities, percentile_interval, resampling_groups


def scores(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The score of each cell (N,): one minus the probability of its true class."""
    return 1.0 - probabilities[np.arange(len(labels)), labels]


def subject_weights(subjects: Sequence) -> np.ndarray:
    """Each cell's weight in the quantile: 1 / (its subject's cells); a cell without a subject, 1."""
    keys = [s if isinstance(s, str) and s else f"cell:{i}" for i, s in enumerate(subjects)]
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse]


def units_needed(coverage: float) -> int:
    """The fewest validation units (subjects, or cells without one) that can give `coverage`."""
    return int(np.floor(coverage / (1 - coverage) + 1e-9)) + 1


def fit_threshold(probabilities: np.ndarray, labels: np.ndarray, subjects: Sequence, coverage: float
                  ) -> float | None:
    """The score threshold that gives `coverage` on exchangeable data: the weighted quantile of the
    validation scores at level coverage x (1 + 1/units), units being subjects (or cells). None
    when there are too few units for that coverage (see `units_needed`)."""
    weights = subject_weights(subjects)
    units = weights.sum()
    level = coverage * (1 + 1 / units)
    if level >= 1:
        return None
    values = scores(probabilities, labels)
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order]) / units
    return float(values[order][np.searchsorted(cumulative, level)])


def prediction_sets(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """Membership (N, C): every class whose score would be within the threshold, i.e. whose
    probability is at least 1 - threshold; the top class always (a set is never empty)."""
    members = probabilities >= 1.0 - threshold - 1e-12
    members[np.arange(len(probabilities)), probabilities.argmax(axis=1)] = True
    return members


def set_labels(members: np.ndarray, classes: Sequence[str]) -> list[str]:
    """Each set as text, classes in index order joined by '|': 'hem', 'hem|all'."""
    return ["|".join(c for c, inside in zip(classes, row, strict=True) if inside) for row in members]


def referred(members: np.ndarray) -> np.ndarray:
    """Which images are referred to a human (N,): those whose set holds more than one class."""
    return members.sum(axis=1) > 1


@dataclass(frozen=True)
class SetMeasures:
    """What prediction sets measure on labelled images: the share that hold the true class (with
    its 95% interval over subject-resampled replicates), their mean size and the share referred."""

    coverage: float
    coverage_low: float
    coverage_high: float
    mean_size: float
    refer_rate: float


def measure_sets(members: np.ndarray, labels: np.ndarray, subjects: Sequence, replicates: int, seed: int
                 ) -> SetMeasures:
    """Coverage, its interval, mean set size and referral rate of the sets `members` (N, C)."""
    covered = members[np.arange(len(labels)), labels].astype(np.float64)
    draws = bootstrap_multiplicities(resampling_groups(subjects), replicates, seed)
    low, high = percentile_interval(draws @ covered / draws.sum(axis=1) if replicates else None)
    return SetMeasures(float(covered.mean()), low, high, float(members.sum(axis=1).mean()),
                       float(referred(members).mean()))
