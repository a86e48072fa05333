"""One decision per patient from their cells.

A patient's probability is the mean of the class probabilities of their cells, leaving out those that
are out of distribution or unreadable. Why the mean: it stays a probability, needs nothing
fitted, and a few odd cells move it by their share only; multiplying the cells' likelihoods as if
they were independent evidence would make every patient with many cells certain. A temperature
fitted on the validation subjects is kept where it helps (as for cells), and the patient's
prediction set uses the same conformal machinery with each validation subject one unit: with the
few subjects a validation split has, its coverage is a rough guide, and the card says on how many
subjects it was fitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from allcls.inference import conformal
from allcls.inference.calibration import calibrated, choose_temperature
from allcls.inference.decision import AMBIGUOUS, OOD, UNCERTAIN, UNREADABLE, PatientRule

AGGREGATION = "mean of the probabilities of the cells in distribution"


@dataclass(frozen=True)
class Patients:
    """Cells grouped by patient: ids (P,), probabilities (P, C), cells, readable cells and answered
    cells per patient, and the share of each patient's readable cells judged out of distribution."""

    ids: list[str]
    probabilities: np.ndarray
    cells: np.ndarray
    readable: np.ndarray
    used: np.ndarray
    ood_share: np.ndarray


def group(probabilities: np.ndarray, patients: Sequence[str], used_cells: np.ndarray, readable: np.ndarray,
          out_of_distribution: np.ndarray) -> Patients:
    """Each patient's mean probability over their used cells (over their readable cells where
    none is in distribution, so that the call is still there to read; such a patient is referred)."""
    ids = sorted(set(patients))
    index = {p: i for i, p in enumerate(ids)}
    rows = np.array([index[p] for p in patients], dtype=np.int64)
    count = len(ids)
    classes = probabilities.shape[1] if probabilities.ndim == 2 else 0
    sums, fallback = np.zeros((count, classes)), np.zeros((count, classes))
    np.add.at(sums, rows[used_cells], probabilities[used_cells])
    np.add.at(fallback, rows[readable], probabilities[readable])
    used = np.bincount(rows[used_cells], minlength=count)
    seen = np.bincount(rows[readable], minlength=count)
    total = np.where(used[:, None] > 0, sums, fallback)
    divisor = np.where(used > 0, used, np.maximum(seen, 1))[:, None]
    mean = total / divisor
    ood = np.bincount(rows[readable & out_of_distribution], minlength=count) / np.maximum(seen, 1)
    return Patients(ids, mean, np.bincount(rows, minlength=count), seen, used, ood)


def fit_rule(patients: Patients, labels: np.ndarray, coverage: float | None) -> tuple[PatientRule, str]:
    """The patient rule fitted on validation patients (`labels`: each patient's class); without a
    `coverage` (the model has no prediction sets), no patient sets either."""
    temperature, note = choose_temperature(patients.probabilities, labels)
    probabilities = calibrated(patients.probabilities, temperature)
    threshold = None if coverage is None else \
        conformal.fit_threshold(probabilities, labels, [None] * len(labels), coverage)
    if coverage is None:
        sets = "no patient sets (the model has none)"
    elif threshold is None:
        sets = (f"no patient sets: {coverage:.0%} coverage needs {conformal.units_needed(coverage)} validation "
                f"subjects, there are {len(labels)}")
    else:
        sets = f"{coverage:.0%} coverage over patients"
    rule = PatientRule(AGGREGATION, temperature, coverage if threshold is not None else None, threshold, len(labels))
    return rule, (f"fitted on {len(labels)} validation subjects ({sets}; temperature {note}); with so few subjects "
                  "the patient-level coverage is a rough guide")


@dataclass(frozen=True)
class PatientDecisions:
    probabilities: np.ndarray  # (P, C), calibrated
    labels: np.ndarray
    members: np.ndarray  # (P, C) sets
    refer: np.ndarray
    reasons: list[str]


def decide(rule: PatientRule, patients: Patients) -> PatientDecisions:
    """Each patient's call: referred when most of their readable cells are out of distribution,
    none could be read, or their set does not hold exactly one class."""
    probabilities = calibrated(patients.probabilities, rule.temperature).copy()
    probabilities[patients.readable == 0] = np.nan
    labels = np.nan_to_num(probabilities, nan=-1).argmax(axis=1)
    classes = probabilities.shape[1]
    members = (conformal.prediction_sets(probabilities, rule.threshold) if rule.threshold is not None
               else np.eye(classes, dtype=bool)[labels])
    sizes = members.sum(axis=1)
    flags = {UNREADABLE: patients.readable == 0,
             OOD: patients.ood_share > 0.5, AMBIGUOUS: sizes > 1,
             UNCERTAIN: (sizes == 0) & (patients.readable > 0)}
    reasons = ["; ".join(name for name, flag in flags.items() if flag[i]) for i in range(len(labels))]
    return PatientDecisions(probabilities, labels, members, np.array([bool(r) for r in reasons], dtype=bool), reasons)
