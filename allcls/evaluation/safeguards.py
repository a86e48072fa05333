"""Fitting a model's decision rule (allcls.inference.decision) on its own data: the
out-of-distribution gate on the training split, the temperature, the prediction sets, the protected
miss rate and the patient rule on the validation split (what they do on a labelled split is
allcls.evaluation.decision_measures). Packaging and evaluation both call this, so a packaged model
refers exactly the cells its evaluation says it refers."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from allcls.errors import AllclsError
from allcls.evaluation.settings import RuleSettings
from allcls.evaluation.targets import EvaluationSet
from allcls.inference import conformal, patients
from allcls.inference.calibration import calibrated, choose_temperature
from allcls.inference.decision import DecisionRule, ProtectRule, SetRule, combined
from allcls.inference.ood import OodGate
from allcls.inference.outputs import Networks
from allcls.predictions import probabilities_of

log = logging.getLogger(__name__)
COVERAGES = (0.8, 0.85, 0.9, 0.95, 0.98, 0.99)  # what a silent rule's warning tries instead


@dataclass(frozen=True)
class SplitOutputs:
    """A split as the model sees it: combined probabilities before any temperature (N, C), the
    vote's class where the rule votes, what the gate reads (allcls.inference.predictor.Outputs), and
    the split's labels and subjects."""

    samples: EvaluationSet
    raw: np.ndarray
    vote: np.ndarray | None
    features: list[np.ndarray]
    logits: list[np.ndarray]
    inputs: list[np.ndarray]
    members: np.ndarray | None = None  # each member's probabilities (members, N, C); None from a logged table

    @property
    def labels(self) -> np.ndarray:
        return self.samples.labels

    @property
    def subjects(self) -> list[str | None]:
        return self.samples.subjects


def table_outputs(table: pd.DataFrame) -> SplitOutputs:
    """A logged prediction table as split outputs (no features: the gate cannot be fitted on them)."""
    samples = EvaluationSet("", "", table["sample_id"].tolist(), [s if isinstance(s, str) else None for s in
                                                                  table["subject"].tolist()],
                            [], table["label"].to_numpy())
    return SplitOutputs(samples, probabilities_of(table), None, [], [], [])


def split_outputs(predictor: Networks, samples: EvaluationSet, features: bool, desc: str) -> SplitOutputs:
    outputs = predictor.outputs(samples.paths, desc=desc, features=features)
    raw, vote = combined(outputs.per_view, predictor.weights, predictor.rule, None)
    return SplitOutputs(samples, raw, vote, outputs.features, outputs.logits, outputs.inputs,
                        outputs.per_view.mean(axis=0))


def train_sample(samples: EvaluationSet, limit: int, seed: int) -> EvaluationSet:
    """At most `limit` training cells, each class drawn in proportion to its share (every class
    keeps at least one cell, so that each has a mean to be near)."""
    count = len(samples.paths)
    if count <= limit:
        return samples
    rng = np.random.default_rng(seed)
    classes, sizes = np.unique(samples.labels, return_counts=True)
    quota = np.maximum(1, np.floor(limit * sizes / count)).astype(int)
    keep = np.sort(np.concatenate([rng.choice(np.flatnonzero(samples.labels == c), size=min(q, n), replace=False)
                                   for c, q, n in zip(classes, quota, sizes, strict=True)]))
    return EvaluationSet(samples.dataset, samples.split, [samples.sample_ids[i] for i in keep],
                         [samples.subjects[i] for i in keep], [samples.paths[i] for i in keep], samples.labels[keep])


@dataclass(frozen=True)
class FittedRule:
    rule: DecisionRule
    gate: OodGate | None
    warnings: list[str]


def fit_rule(validation: SplitOutputs, train: SplitOutputs | None, classes: Sequence[str], settings: RuleSettings
             ) -> FittedRule:
    """The decision rule fitted on the validation split (and the gate's statistics on `train`)."""
    classes = list(classes)
    labels, subjects = validation.labels, validation.subjects
    gate, ood_note = None, "off (ood.enabled=false)"
    if settings.ood.enabled:
        if train is None or not len(train.labels):
            raise AllclsError("The out-of-distribution gate needs the training split's images: pass "
                              "dataset_root=<where the dataset is>, or ood.enabled=false.")
        gate = OodGate.fit((train.inputs, train.features, train.labels),
                           (validation.inputs, validation.features, validation.logits), settings.ood.max_rejected)
        ood_note = (f"how far each member's input and features are from those of {len(train.labels)} training "
                    f"cells (Mahalanobis), and the energy of its logits; threshold {gate.threshold:.3f}, set on "
                    f"{len(labels)} validation cells so that a new cell like them is rejected with probability at "
                    f"most {settings.ood.max_rejected:.0%}")
        if len(labels) + 1 < 1 / settings.ood.max_rejected:
            ood_note += (f" (only approximately: {settings.ood.max_rejected:.0%} needs "
                         f"{int(np.ceil(1 / settings.ood.max_rejected - 1))} validation cells, the threshold is the "
                         "largest validation score)")
    temperature, temperature_note = choose_temperature(validation.raw, labels)
    probabilities = calibrated(validation.raw, temperature)
    sets, sets_note = None, "off"
    if settings.coverage is not None:
        fitted = conformal.fit_thresholds(probabilities, labels, subjects, settings.coverage, settings.sets, classes)
        if fitted.thresholds is None:
            sets_note = fitted.reason(settings.coverage, subjects)
        else:
            sets = SetRule(settings.sets, settings.coverage, [float(t) for t in fitted.thresholds])
            sets_note = (f"{settings.sets.replace('_', '-')} split-conformal sets (least ambiguous), fitted on "
                         f"{len(labels)} validation cells, each subject counted once")
    protect, protect_note = None, "off (referral.protect=null)"
    if settings.referral.protect:
        protected = protected_classes(settings.referral.protect, classes)
        mask = np.array([c in protected for c in classes])
        threshold = conformal.fit_clearing_threshold(probabilities, labels, subjects, mask,
                                                     settings.referral.max_miss_rate)
        if threshold is None:
            needed = conformal.units_needed_to_protect(settings.referral.max_miss_rate)
            positive = [s for s, p in zip(subjects, mask[labels], strict=True) if p]
            have = int(round(conformal.subject_weights(positive).sum()))
            units = conformal.unit_name(subjects)
            protect_note = (f"none: a miss rate of {settings.referral.max_miss_rate:.0%} needs {needed} validation "
                            f"{units} of {', '.join(protected)}, there are {have}: "
                            f"raise referral.max_miss_rate or validate on more {units.split(' ')[0]}")
        else:
            protect = ProtectRule(protected, settings.referral.max_miss_rate, threshold)
            protect_note = (f"a cell is cleared as not {' / '.join(protected)} only while their probability is under "
                            f"{threshold:.3f}, fitted on the validation cells of {', '.join(protected)}")
    rule = DecisionRule(temperature, temperature_note, sets, sets_note, protect, protect_note,
                        gate.threshold if gate is not None else None, ood_note)
    ood = gate.scores(validation.inputs, validation.features, validation.logits) if gate is not None else None
    patient_rule, patient_note = fit_patients(rule, validation, probabilities, ood, classes,
                                              sets.coverage if sets is not None else None)
    rule = DecisionRule(**{**rule.__dict__, "patient": patient_rule, "patient_note": patient_note})
    warnings = silent_rule_warnings(validation, rule, classes, settings, ood)
    return FittedRule(rule, gate, warnings)


def protected_classes(protect: tuple[str, ...] | str, classes: list[str]) -> list[str]:
    names = [protect] if isinstance(protect, str) else list(protect)
    unknown = [n for n in names if n not in classes]
    if unknown or len(names) >= len(classes):
        raise AllclsError(f"referral.protect={names}: name one or more of the model's classes {classes}, not all "
                          "of them" + (f" ({unknown} are not among them)" if unknown else ""))
    return names


def fit_patients(rule: DecisionRule, validation: SplitOutputs, probabilities: np.ndarray, ood: np.ndarray | None,
                 classes: list[str], coverage: float | None) -> tuple[patients.PatientRule | None, str]:
    subjects = validation.subjects
    if not any(isinstance(s, str) and s for s in subjects):
        return None, "none: the validation split has no subject ids (a patient's call is then the plain mean of " \
                     "their cells, without a set)"
    grouped, labels = patient_groups(validation, probabilities, ood, rule)
    return patients.fit_rule(grouped, labels, coverage)


def patient_groups(split: SplitOutputs, probabilities: np.ndarray, ood: np.ndarray | None, rule: DecisionRule
                   ) -> tuple[patients.Patients, np.ndarray]:
    """A split's cells grouped by subject (cells without one are their own patient), with each
    patient's class (the most frequent among their cells)."""
    ids = [s if isinstance(s, str) and s else f"cell:{i}" for i, s in enumerate(split.subjects)]
    flagged = ood > rule.ood_threshold if ood is not None and rule.ood_threshold is not None \
        else np.zeros(len(ids), dtype=bool)
    readable = np.ones(len(ids), dtype=bool)
    grouped = patients.group(probabilities, ids, readable & ~flagged, readable, flagged)
    frame = pd.DataFrame({"patient": ids, "label": split.labels})
    labels = frame.groupby("patient")["label"].agg(lambda v: v.value_counts().index[0])
    return grouped, labels.loc[grouped.ids].to_numpy()


def silent_rule_warnings(validation: SplitOutputs, rule: DecisionRule, classes: list[str], settings: RuleSettings,
                         ood: np.ndarray | None) -> list[str]:
    """One line where the rule refers nobody, or nearly everybody, on validation, with coverages that
    would refer a useful share."""
    if rule.sets is None or settings.coverage is None:
        return []
    probabilities = calibrated(validation.raw, rule.temperature)
    rate = rule.decide(probabilities, classes, validation.vote, ood).refer.mean()
    if 0.01 <= rate <= 0.5:
        return []
    tried = []
    for coverage in COVERAGES:
        fitted = conformal.fit_thresholds(probabilities, validation.labels, validation.subjects, coverage,
                                          settings.sets, classes)
        if fitted.thresholds is not None:
            other = DecisionRule(**{**rule.__dict__, "sets": SetRule(settings.sets, coverage,
                                                                       list(fitted.thresholds))})
            share = other.decide(probabilities, classes, validation.vote, ood).refer.mean()
            tried.append(f"{coverage:.0%} refers {share:.0%}")
    what = "no validation cell" if rate < 0.01 else f"{rate:.0%} of the validation cells"
    return [f"At {settings.coverage:.0%} coverage this model refers {what}"
            + (f"; {', '.join(tried)}" if tried else "") + ": choose the coverage that refers a useful share."]
