"""What a fitted decision rule (allcls.evaluation.safeguards) does on a labelled split: the share
referred and why, the accuracy of what is answered, coverage per class, the protected miss rate, the
out-of-distribution gate on the split and on probe images, and the patient-level call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from allcls.evaluation.safeguards import FittedRule, SplitOutputs, patient_groups
from allcls.inference import conformal, patients
from allcls.inference.calibration import calibrated
from allcls.inference.conformal import Interval
from allcls.inference.decision import REASONS, Decisions
from allcls.inference.ood import OodGate
from allcls.inference.outputs import Networks
from allcls.metrics.bootstrap import bootstrap_multiplicities, metric_table, resampling_groups


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


def measure_probes(predictor: Networks, gate: OodGate, own_scores: np.ndarray, own_paths: Sequence[str],
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


def probe_figures(predictor: Networks, fitted: FittedRule, split: SplitOutputs, seed: int) -> pd.DataFrame | None:
    """The gate of `fitted` on every probe set against the split's own cells (`probe_table`); None
    without a gate."""
    gate = fitted.gate
    if gate is None:
        return None
    own = gate.scores(split.inputs, split.features, split.logits)
    return probe_table(measure_probes(predictor, gate, own, split.samples.paths, predictor.classes, seed))


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
