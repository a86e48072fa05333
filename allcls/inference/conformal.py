"""Prediction sets that hold the true class with a chosen probability, and a bound on the miss that
matters (split conformal prediction, fitted on validation).

Sets. A cell's score is one minus the probability of its true class (the least-ambiguous set-valued
classifier of Sadinle, Lei and Wasserman 2019: the smallest sets on average). A class enters a cell's
set when its probability is at least one minus its threshold. With `class_conditional` sets (Mondrian
conformal, the default) each class has its own threshold, fitted on that class's validation cells,
so the coverage holds for every class, a rare one included; `marginal` sets share one threshold and
hold it only on average over classes. A set of one class is an answer; a set of several means the
model cannot tell them apart at that coverage, and an EMPTY set means no class reaches the
probability its validation cells reached: both are referred. An empty set is not filled with the top
class: on a validation split classified without error the thresholds are tiny, and filling would
turn every doubtful cell into a confident answer.

The miss that matters. `fit_clearing_threshold` bounds the rate at which cells of protected classes
(e.g. `all`, or every malignant class) are cleared as another class (conformal risk control,
Angelopoulos et al. 2022): a cell is cleared only when the protected classes' total probability is
below the threshold; otherwise it is referred, whatever its top class.

Cells of one patient are not independent: where subjects are known, each validation subject counts
once (its cells share its weight), so a patient with many cells does not set a threshold alone. That
weighting is why this module is allcls's own rather than MAPIE's or TorchCP's: neither weighs
calibration samples by group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from allcls.metrics.bootstrap import bootstrap_multiplicities, percentile_interval, resampling_groups

SetKind = Literal["class_conditional", "marginal"]
SET_KINDS: tuple[SetKind, ...] = get_args(SetKind)


def scores(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The score of each cell (N,): one minus the probability of its true class."""
    return 1.0 - probabilities[np.arange(len(labels)), labels]


def subject_weights(subjects: Sequence) -> np.ndarray:
    """Each cell's weight in the quantile: 1 / (its subject's cells); a cell without a subject, 1."""
    keys = [s if isinstance(s, str) and s else f"cell:{i}" for i, s in enumerate(subjects)]
    if not keys:
        return np.zeros(0)
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
    if units == 0:
        return None
    level = coverage * (1 + 1 / units)
    if level >= 1 - 1e-9:  # (the tolerance keeps float rounding from deciding the boundary: units_needed's)
        return None
    values = scores(probabilities, labels)
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    index = np.searchsorted(cumulative / cumulative[-1], level)
    return float(values[order][min(int(index), len(values) - 1)])


@dataclass(frozen=True)
class SetsFit:
    """Thresholds per class (the same for every class with marginal sets), or why there are none:
    `short` lists (class, validation units it has, units needed) for each class that has too few."""

    thresholds: np.ndarray | None
    short: list[tuple[str, int, int]]

    def reason(self, coverage: float, subjects: Sequence) -> str:
        needed, units = units_needed(coverage), unit_name(subjects)
        return (f"{coverage:.0%} coverage needs {needed} validation {units} per class or more; "
                + ", ".join(f"{name} has {have}" for name, have, _ in self.short)
                + f": lower the coverage, or validate on more {units.split(' ')[0]}")


def unit_name(subjects: Sequence) -> str:
    """What a validation unit is, in words: a subject, or an image where the dataset names none."""
    known = sum(isinstance(s, str) and bool(s) for s in subjects)
    if known == 0:
        return "images (the dataset names no subjects: each image counts once)"
    return "subjects" if known == len(subjects) else "subjects (or images without a subject id)"


def fit_thresholds(probabilities: np.ndarray, labels: np.ndarray, subjects: Sequence, coverage: float,
                   kind: SetKind, classes: Sequence[str]) -> SetsFit:
    """Each class's score threshold for `coverage`: fitted on that class's validation cells
    (class_conditional), or one threshold on all of them (marginal)."""
    subjects = list(subjects)
    if kind == "marginal":
        threshold = fit_threshold(probabilities, labels, subjects, coverage)
        units = int(round(subject_weights(subjects).sum()))
        return SetsFit(None if threshold is None else np.full(len(classes), threshold),
                       [] if threshold is not None else [("all classes", units, units_needed(coverage))])
    thresholds, short = np.zeros(len(classes)), []
    for c, name in enumerate(classes):
        own = labels == c
        own_subjects = [s for s, o in zip(subjects, own, strict=True) if o]
        threshold = fit_threshold(probabilities[own], labels[own], own_subjects, coverage)
        if threshold is None:
            units = int(round(subject_weights(own_subjects).sum()))
            short.append((name, units, units_needed(coverage)))
        else:
            thresholds[c] = threshold
    return SetsFit(None if short else thresholds, short)


def prediction_sets(probabilities: np.ndarray, thresholds: np.ndarray | float) -> np.ndarray:
    """Membership (N, C): every class whose probability is at least one minus its threshold. A set
    may be empty (no class is probable enough) or hold several classes: both are referred."""
    return probabilities >= 1.0 - np.asarray(thresholds) - 1e-12


def set_labels(members: np.ndarray, classes: Sequence[str]) -> list[str]:
    """Each set as text, classes in index order joined by '|': 'hem', 'hem|all', '' (empty)."""
    return ["|".join(c for c, inside in zip(classes, row, strict=True) if inside) for row in members]


def referred(members: np.ndarray) -> np.ndarray:
    """Which images the sets refer to a human (N,): those whose set does not hold exactly one class."""
    return members.sum(axis=1) != 1


def units_needed_to_protect(max_miss_rate: float) -> int:
    """The fewest protected validation units that can bound the miss rate at `max_miss_rate`."""
    return int(np.ceil(1 / max_miss_rate - 1 - 1e-9))


def fit_clearing_threshold(probabilities: np.ndarray, labels: np.ndarray, subjects: Sequence, protected: np.ndarray,
                           max_miss_rate: float) -> float | None:
    """The largest threshold on the protected classes' total probability below which a cell may be
    cleared, such that protected cells are cleared at a rate of at most `max_miss_rate` (conformal
    risk control with a loss bounded by 1: (n R(t) + 1) / (n + 1) <= rate, n = protected validation
    units). None when there are too few protected units for that rate (`units_needed_to_protect`)."""
    positive = protected[labels]
    mass = probabilities[positive][:, protected].sum(axis=1)
    weights = subject_weights([s for s, p in zip(subjects, positive, strict=True) if p])
    units = weights.sum()
    budget = max_miss_rate * (units + 1) - 1  # the weight of cleared protected cells allowed
    if units == 0 or budget < 0:
        return None
    order = np.argsort(mass)
    cleared_weight = np.cumsum(weights[order])
    allowed = int(np.searchsorted(cleared_weight, budget + 1e-12, side="right"))  # cells that may be cleared
    return 1.0 + 1e-9 if allowed >= len(mass) else float(mass[order][allowed])


def not_cleared(probabilities: np.ndarray, protected: np.ndarray, threshold: float) -> np.ndarray:
    """Cells whose top class is unprotected although the protected classes are too probable to clear them (N,)."""
    top_unprotected = ~protected[probabilities.argmax(axis=1)]
    return top_unprotected & (probabilities[:, protected].sum(axis=1) >= threshold)


def missed(probabilities: np.ndarray, labels: np.ndarray, protected: np.ndarray, refer: np.ndarray) -> np.ndarray:
    """Protected cells answered as an unprotected class without referral (N,)."""
    return protected[labels] & ~protected[probabilities.argmax(axis=1)] & ~refer


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def text(self, percent: bool = False) -> str:
        if percent:
            return f"{self.value:.1%} [{self.low:.1%}, {self.high:.1%}]"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def share(flags: np.ndarray, among: np.ndarray, draws: np.ndarray) -> Interval:
    """The share of `among` cells that are `flags`, with its 95% interval over the replicates `draws`."""
    flags, among = flags.astype(np.float64), among.astype(np.float64)
    total = among.sum()
    value = float((flags * among).sum() / total) if total else float("nan")
    if not len(draws) or not total:
        return Interval(value, float("nan"), float("nan"))
    with np.errstate(invalid="ignore", divide="ignore"):
        replicated = draws @ (flags * among) / (draws @ among)
    return Interval(value, *percentile_interval(replicated))


@dataclass(frozen=True)
class SetMeasures:
    """What prediction sets measure on labelled images: the share that hold the true class (with
    its 95% interval over subject-resampled replicates), their mean size and the share referred;
    the same per class (`per_class`: class -> (coverage, mean size))."""

    coverage: float
    coverage_low: float
    coverage_high: float
    mean_size: float
    refer_rate: float
    per_class: dict[str, tuple[Interval, float]]
    empty_rate: float = 0.0


def measure_sets(members: np.ndarray, labels: np.ndarray, subjects: Sequence, replicates: int, seed: int,
                 classes: Sequence[str] | None = None) -> SetMeasures:
    """Coverage, its interval, mean set size and referral rate of the sets `members` (N, C), overall and per class."""
    covered = members[np.arange(len(labels)), labels]
    draws = bootstrap_multiplicities(resampling_groups(subjects), replicates, seed) if replicates else np.zeros((0, 0))
    overall = share(covered, np.ones(len(labels), dtype=bool), draws)
    sizes = members.sum(axis=1)
    per_class = {}
    for c, name in enumerate(classes or []):
        own = labels == c
        if own.any():
            per_class[name] = (share(covered, own, draws), float(sizes[own].mean()))
    return SetMeasures(overall.value, overall.low, overall.high, float(sizes.mean()), float(referred(members).mean()),
                       per_class, float((sizes == 0).mean()))
