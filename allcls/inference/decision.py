"""When a model answers and when it refers: the rule a packaged model carries (fitted by
allcls.evaluation.safeguards on the run's own validation cells), applied to new images.

A cell is answered with its class only when nothing below says otherwise; else it is referred to a
human with every reason that applies, most fundamental first:

    unreadable           the file could not be decoded
    out of distribution  it does not look like the cells this model was trained on (allcls.inference.ood)
    not cleared          its top class is unprotected, but the protected classes are too probable to
                         clear it at the protected miss rate (conformal risk control)
    ambiguous            its prediction set holds several classes (or, for a vote, the vote and the
                         probabilities disagree)
    uncertain            its prediction set is empty: no class is as probable as that class's
                         validation cells were

The probabilities shown are the combining rule's, temperature-scaled only where that helped on
validation (allcls.inference.calibration.choose_temperature). A vote's share of members is not a
probability: a `vote` model's probabilities are its members' weighted mean, beside the vote's label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from allcls.inference import conformal
from allcls.inference.calibration import calibrated
from allcls.inference.combining import Rule, combine

UNREADABLE, OOD, NOT_CLEARED, AMBIGUOUS, UNCERTAIN = (
    "unreadable", "out of distribution", "not cleared", "ambiguous", "uncertain")
REASONS = {  # what each reason means, for a clinician reading a row
    UNREADABLE: "the image could not be read",
    OOD: "does not look like the cells this model was trained on",
    NOT_CLEARED: "cannot be cleared at the protected miss rate: the protected class is too probable to rule out",
    AMBIGUOUS: "more than one class is plausible at the chosen coverage",
    UNCERTAIN: "no class is as probable as that class's validation cells were",
}


@dataclass(frozen=True)
class SetRule:
    """Prediction sets: `kind` (class_conditional or marginal) for `coverage`, one threshold per class."""

    kind: conformal.SetKind
    coverage: float
    thresholds: list[float]

    def sets(self, probabilities: np.ndarray) -> np.ndarray:
        return conformal.prediction_sets(probabilities, np.asarray(self.thresholds))


@dataclass(frozen=True)
class ProtectRule:
    """Cells of `classes` are cleared as another class at a rate of at most `max_miss_rate`: a cell
    is cleared only while the protected classes' total probability is below `threshold`."""

    classes: list[str]
    max_miss_rate: float
    threshold: float

    def mask(self, classes: Sequence[str]) -> np.ndarray:
        return np.array([c in self.classes for c in classes])


@dataclass(frozen=True)
class DecisionRule:
    """Everything that turns probabilities into an answer or a referral, with a note on each part
    saying how it was fitted or why it is absent (the model card prints them)."""

    temperature: float | None = None
    temperature_note: str = ""
    sets: SetRule | None = None
    sets_note: str = ""
    protect: ProtectRule | None = None
    protect_note: str = ""
    ood_threshold: float | None = None  # the gate's statistics travel beside the spec (ood.npz)
    ood_note: str = ""
    patient: PatientRule | None = None
    patient_note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DecisionRule:
        values = dict(values)
        values["sets"] = SetRule(**values["sets"]) if values.get("sets") else None
        values["protect"] = ProtectRule(**values["protect"]) if values.get("protect") else None
        values["patient"] = PatientRule(**values["patient"]) if values.get("patient") else None
        return cls(**values)

    def decide(self, probabilities: np.ndarray, classes: Sequence[str], vote: np.ndarray | None = None,
               ood_scores: np.ndarray | None = None) -> Decisions:
        """The decision for each cell from its (calibrated) probabilities (N, C); `vote`: the vote's
        class index where the rule is a vote; `ood_scores`: the gate's, where the model has one."""
        labels = probabilities.argmax(axis=1) if vote is None else vote
        members = self.sets.sets(probabilities) if self.sets is not None else np.eye(len(classes), dtype=bool)[labels]
        count = len(probabilities)
        flags: dict[str, np.ndarray] = {}
        if ood_scores is not None and self.ood_threshold is not None:
            flags[OOD] = ood_scores > self.ood_threshold
        if self.protect is not None:
            flags[NOT_CLEARED] = conformal.not_cleared(probabilities, self.protect.mask(classes),
                                                       self.protect.threshold)
        sizes = members.sum(axis=1)
        flags[AMBIGUOUS] = (sizes > 1) | (labels != probabilities.argmax(axis=1))
        flags[UNCERTAIN] = sizes == 0
        reasons = ["; ".join(name for name, flag in flags.items() if flag[i]) for i in range(count)]
        return Decisions(labels, members, np.array([bool(r) for r in reasons], dtype=bool), reasons)


@dataclass(frozen=True)
class PatientRule:
    """A patient's call from their cells: `aggregation` of the answered cells' probabilities, a
    temperature fitted on validation subjects where it helped, and prediction sets over patients
    (marginal: one threshold, fitted on `subjects` validation subjects, each one unit)."""

    aggregation: str
    temperature: float | None
    coverage: float | None
    threshold: float | None
    subjects: int


@dataclass(frozen=True)
class Decisions:
    """Per cell: the answered class index, the prediction set (N, C), whether it is referred, and why."""

    labels: np.ndarray
    members: np.ndarray
    refer: np.ndarray
    reasons: list[str]


def combined(per_view: np.ndarray, weights: np.ndarray, rule: Rule, temperature: float | None
             ) -> tuple[np.ndarray, np.ndarray | None]:
    """The model's probabilities (N, C) from its members' per-view probabilities (views, members, N,
    C), temperature-scaled; and, for a vote, the vote's class (N,) (its probabilities being the
    members' weighted mean: a share of votes is not a probability)."""
    mean = per_view.mean(axis=0)
    if rule == "vote":
        return calibrated(combine(mean, weights, "arithmetic"), temperature), combine(mean, weights, "vote").argmax(1)
    return calibrated(combine(mean, weights, rule), temperature), None
