"""Fitting a model's decision rule (allcls.inference.decision) on its own data, and measuring it:
the out-of-distribution gate on the training split, the temperature, the prediction sets, the
protected miss rate and the patient rule on the validation split; what they do on a labelled split.
Packaging and evaluation both call this, so a packaged model refers exactly the cells its
evaluation says it refers."""

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
from allcls.inference.conformal import Interval
from allcls.inference.decision import REASONS, DecisionRule, Decisions, ProtectRule, SetRule, combined
from allcls.inference.ood import OodGate
from allcls.inference.predictor import Predictor
from allcls.metrics.bootstrap import bootstrap_multiplicities, metric_table, resampling_groups
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


def split_outputs(predictor: Predictor, samples: EvaluationSet, features: bool, desc: str) -> SplitOutputs:
    outputs = predictor.outputs(samples.paths, desc=desc, features=features)
    raw, vote = combined(outputs.per_view, predictor.weights, predictor.rule, None)
    return SplitOutputs(samples, raw, vote, outputs.features, outputs.logits, outputs.inputs)


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
            sets_note = fitted.reason(settings.coverage)
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
            protect_note = (f"none: a miss rate of {settings.referral.max_miss_rate:.0%} needs {needed} validation "
                            f"subjects of {', '.join(protected)} (or cells without subject ids), there are {have}: "
                            "raise referral.max_miss_rate or validate on more subjects")
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


@dataclass(frozen=True)
class DecisionMeasures:
    """What a decision rule does on a labelled split, with 95% intervals over subjects."""

    sets: conformal.SetMeasures | None
    refer_rate: Interval
    reasons: dict[str, float]  # reason -> share of cells referred for it
    answered_accuracy: Interval  # accuracy of the cells not referred
    errors_referred: Interval  # share of the misclassified cells that were referred
    ood_rejected: float | None  # share of the split's cells the gate rejected
    miss_rate: Interval | None  # protected cells cleared as another class
    patients: pd.DataFrame | None  # metric, value, ci_low, ci_high at patient level

    def metrics(self, prefix: str) -> dict[str, float]:
        values = {f"{prefix}/decision/refer_rate": self.refer_rate.value,
                  f"{prefix}/decision/refer_rate_ci_low": self.refer_rate.low,
                  f"{prefix}/decision/refer_rate_ci_high": self.refer_rate.high,
                  f"{prefix}/decision/answered_accuracy": self.answered_accuracy.value,
                  f"{prefix}/decision/errors_referred": self.errors_referred.value}
        values.update({f"{prefix}/decision/refer_{reason.replace(' ', '_')}": share
                       for reason, share in self.reasons.items()})
        if self.ood_rejected is not None:
            values[f"{prefix}/ood/rejected"] = self.ood_rejected
        if self.miss_rate is not None:
            values.update({f"{prefix}/decision/miss_rate": self.miss_rate.value,
                           f"{prefix}/decision/miss_rate_ci_low": self.miss_rate.low,
                           f"{prefix}/decision/miss_rate_ci_high": self.miss_rate.high})
        if self.sets is not None:
            for name, (coverage, size) in self.sets.per_class.items():
                values.update({f"{prefix}/conformal/coverage_{name}": coverage.value,
                               f"{prefix}/conformal/coverage_{name}_ci_low": coverage.low,
                               f"{prefix}/conformal/coverage_{name}_ci_high": coverage.high,
                               f"{prefix}/conformal/mean_set_size_{name}": size})
        if self.patients is not None:
            for row in self.patients.itertuples(index=False):
                values.update({f"{prefix}/patient/{row.metric}": row.value,
                               f"{prefix}/patient/{row.metric}_ci_low": row.ci_low,
                               f"{prefix}/patient/{row.metric}_ci_high": row.ci_high})
        return {k: float(v) for k, v in values.items() if v is not None and np.isfinite(v)}

    def lines(self) -> list[str]:
        """The terminal's and the card's summary, one finding per line."""
        rest = (f"accuracy of the rest {self.answered_accuracy.text()}" if np.isfinite(self.answered_accuracy.value)
                else "none answered")
        errors = (f"{self.errors_referred.value:.0%} of the errors referred" if np.isfinite(self.errors_referred.value)
                  else "no errors to refer")
        lines = [f"referred {self.refer_rate.text(percent=True)} of cells; {rest}; {errors}"]
        if self.reasons:
            lines.append("why: " + ", ".join(f"{reason} {share:.1%}" for reason, share in self.reasons.items()))
        if self.sets is not None:
            lines.append("coverage per class: " + ", ".join(f"{name} {coverage.text()} (mean set size {size:.2f})"
                                                           for name, (coverage, size) in self.sets.per_class.items()))
        if self.miss_rate is not None:
            lines.append(f"protected cells cleared as another class (miss rate): {self.miss_rate.text(percent=True)}")
        if self.ood_rejected is not None:
            lines.append(f"out-of-distribution gate: {self.ood_rejected:.1%} of these cells rejected")
        return lines


def measure(split: SplitOutputs, fitted: FittedRule, classes: list[str], replicates: int, seed: int
            ) -> tuple[Decisions, DecisionMeasures]:
    """The rule's decisions on a labelled split and what they measure."""
    rule = fitted.rule
    probabilities = calibrated(split.raw, rule.temperature)
    ood = fitted.gate.scores(split.inputs, split.features, split.logits) if fitted.gate is not None else None
    decisions = rule.decide(probabilities, classes, split.vote, ood)
    labels, subjects = split.labels, split.subjects
    draws = bootstrap_multiplicities(resampling_groups(subjects), replicates, seed) if replicates \
        else np.zeros((0, len(labels)))
    everyone = np.ones(len(labels), dtype=bool)
    wrong = decisions.labels != labels
    reasons = {}
    for reason in REASONS:
        flagged = np.array([reason in r.split("; ") for r in decisions.reasons])
        if flagged.any():
            reasons[reason] = float(flagged.mean())
    miss = None
    if rule.protect is not None:
        mask = rule.protect.mask(classes)
        miss = conformal.share(conformal.missed(probabilities, labels, mask, decisions.refer), mask[labels], draws)
    sets = conformal.measure_sets(decisions.members, labels, subjects, replicates, seed, classes) \
        if rule.sets is not None else None
    ood_rejected = float(np.mean(ood > rule.ood_threshold)) if ood is not None and rule.ood_threshold is not None \
        else None
    patient_table = None
    if rule.patient is not None and any(isinstance(s, str) and s for s in subjects):
        grouped, patient_labels = patient_groups(split, probabilities, ood, rule)
        decided = patients.decide(rule.patient, grouped)
        usable = np.isfinite(decided.probabilities).all(axis=1)
        patient_table = metric_table(decided.probabilities[usable], patient_labels[usable],
                                     [grouped.ids[i] for i in np.flatnonzero(usable)], classes, replicates, seed)
        patient_table = patient_table[patient_table["metric"].isin(
            ["auroc", "accuracy", "balanced_accuracy", *[f"recall_{c}" for c in classes],
             *[f"specificity_{c}" for c in classes]])].reset_index(drop=True)
        referred_share = float(decided.refer.mean())
        patient_table = pd.concat([patient_table, pd.DataFrame(
            [{"metric": "refer_rate", "value": referred_share, "ci_low": np.nan, "ci_high": np.nan},
             {"metric": "patients", "value": float(len(grouped.ids)), "ci_low": np.nan, "ci_high": np.nan}])],
            ignore_index=True)
    return decisions, DecisionMeasures(sets, conformal.share(decisions.refer, everyone, draws), reasons,
                                       conformal.share(~wrong, ~decisions.refer, draws),
                                       conformal.share(decisions.refer, wrong, draws), ood_rejected, miss,
                                       patient_table)



@dataclass(frozen=True)
class ProbeMeasure:
    name: str
    kind: str  # far or near
    images: int
    auroc: float  # probes against the split's own cells, by the gate's score
    rejected: float  # share of the probes the gate rejects


def measure_probes(predictor: Predictor, gate: OodGate, own_scores: np.ndarray, own_paths: Sequence[str],
                   classes: Sequence[str], seed: int) -> list[ProbeMeasure]:
    """The gate on every probe set (allcls.evaluation.probes) against the split's own cells."""
    from sklearn.metrics import roc_auc_score

    from allcls.evaluation.probes import probe_sets

    measures = []
    for probe in probe_sets(own_paths, classes, seed=seed):
        outputs = predictor.outputs(probe.images, desc=f"Probing the gate: {probe.name}", show_progress=False)
        scores = gate.scores(outputs.inputs, outputs.features, outputs.logits)
        truth = np.r_[np.zeros(len(own_scores)), np.ones(len(scores))]
        auroc = float(roc_auc_score(truth, np.r_[own_scores, scores])) if len(own_scores) else float("nan")
        measures.append(ProbeMeasure(probe.name, probe.kind, len(scores), auroc, float(gate.rejects(scores).mean())))
    return measures


def probe_table(measures: Sequence[ProbeMeasure]) -> pd.DataFrame:
    frame = pd.DataFrame([m.__dict__ for m in measures], columns=["name", "kind", "images", "auroc", "rejected"])
    far = frame[frame["kind"] == "far"]
    if len(far):
        pooled = {"name": "all far probes", "kind": "far", "images": int(far["images"].sum()),
                  "auroc": float(np.average(far["auroc"], weights=far["images"])),
                  "rejected": float(np.average(far["rejected"], weights=far["images"]))}
        frame = pd.concat([frame, pd.DataFrame([pooled])], ignore_index=True)
    return frame


def probe_metrics(table: pd.DataFrame, prefix: str) -> dict[str, float]:
    values = {}
    for row in table.itertuples(index=False):
        key = row.name.replace("'", "").replace(",", "").replace(" ", "_")
        values[f"{prefix}/ood/probe/{key}/auroc"] = row.auroc
        values[f"{prefix}/ood/probe/{key}/rejected"] = row.rejected
    return {k: float(v) for k, v in values.items() if np.isfinite(v)}
