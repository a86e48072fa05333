"""What an evaluation found, computed by one pure function from prediction tables: metrics with
bootstrap intervals, accuracy per subject, calibration (temperature scaling), test-time
augmentation side by side, and the Grad-CAM grid. Nothing here reads images or talks to MLflow."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from allcls.evaluation.decision_measures import DecisionMeasures, probe_metrics
from allcls.evaluation.gradcam import CamGrid
from allcls.inference.calibration import calibrated, choose_temperature, fit_temperature
from allcls.inference.decision import DecisionRule, Decisions
from allcls.metrics.bootstrap import metric_table
from allcls.metrics.names import CALIBRATION, REPORTED
from allcls.predictions import probabilities_of

SHOWN_PER_CLASS = ("recall_", "specificity_")


@dataclass(frozen=True)
class Calibration:
    """Temperature scaling fitted on validation predictions. `temperature` is None when it was not
    fitted; `status` says why (off, no validation predictions, validation all correct)."""

    status: str
    temperature: float | None = None
    probabilities: np.ndarray | None = None  # the evaluated split, scaled
    metrics: pd.DataFrame | None = None  # of the scaled probabilities (no intervals)

    @property
    def param(self) -> str:
        if self.temperature is None:
            return self.status
        return f"{self.temperature:.4f}" + (" (not kept: it did not help on validation)" if "not kept" in self.status
                                            else "")


@dataclass(frozen=True)
class TestTimeAugmentation:
    """The same split predicted as the average over several views of each image."""

    views: list[str]
    table: pd.DataFrame
    metrics: pd.DataFrame  # no intervals


@dataclass(frozen=True)
class DecisionResult:
    """The decision rule (allcls.evaluation.safeguards: fitted on the model's own training and
    validation splits) and what it does on the evaluated split: prediction sets per class, referrals
    and their reasons, the protected miss rate, the out-of-distribution gate on these cells and on
    probes, and the patient-level call."""

    rule: DecisionRule
    decisions: Decisions
    measures: DecisionMeasures
    probes: pd.DataFrame | None = None
    warnings: tuple[str, ...] = ()
    ood_scores: np.ndarray | None = None  # the gate's score of each evaluated cell
    sample_ids: tuple[str, ...] = ()  # the evaluated cells, in the order of `decisions`
    labels: np.ndarray | None = None  # their true classes

    def metrics(self, split: str) -> dict[str, float]:
        values = self.measures.metrics(split)
        sets, rule = self.measures.sets, self.rule
        if sets is not None and rule.sets is not None:
            values.update({f"{split}/conformal/coverage": sets.coverage, f"{split}/conformal/coverage_ci_low":
                           sets.coverage_low, f"{split}/conformal/coverage_ci_high": sets.coverage_high,
                           f"{split}/conformal/mean_set_size": sets.mean_size,
                           f"{split}/conformal/refer_rate": sets.refer_rate,
                           f"{split}/conformal/empty_rate": sets.empty_rate,
                           "conformal/target_coverage": rule.sets.coverage})
        if rule.temperature is not None:
            values["decision/temperature"] = rule.temperature
        if self.probes is not None:
            values.update(probe_metrics(self.probes, split))
        return {k: float(v) for k, v in values.items() if v is not None and np.isfinite(v)}

    def param(self) -> str:
        """The `prediction_sets` param: what the sets are, or why there are none."""
        return self.rule.sets_note


@dataclass(frozen=True)
class Transductive:
    """The split's predictions after a transductive step (it used the whole evaluated batch)."""

    method: str  # e.g. "neighbour correction (k=10, similarity, self 0.5)"
    table: pd.DataFrame
    metrics: pd.DataFrame  # no intervals


@dataclass(frozen=True)
class EvaluationResult:
    evaluated: str  # the run, ensemble or checkpoint, by name
    dataset: str
    split: str
    classes: list[str]
    table: pd.DataFrame  # the prediction table of the split
    origin: str  # "logged by the evaluated run" or "recomputed"
    metrics: pd.DataFrame  # metric, value, ci_low, ci_high
    per_subject: pd.DataFrame
    calibration: Calibration
    tta: TestTimeAugmentation | None = None
    transductive: Transductive | None = None
    decision: DecisionResult | None = None
    gradcam: CamGrid | None = None

    @property
    def title(self) -> str:
        return f"{self.evaluated} on {self.dataset} / {self.split}"

    def metric(self, name: str) -> float:
        return float(self.metrics.set_index("metric").loc[name, "value"])

    def metrics_frame(self) -> pd.DataFrame:
        """The metrics with the TTA and temperature-scaled values as extra columns, where there are any."""
        frame = self.metrics.copy()
        if self.tta is not None:
            frame["with_tta"] = self.tta.metrics["value"].to_numpy()
        if self.calibration.metrics is not None:
            frame["temperature_scaled"] = self.calibration.metrics["value"].to_numpy()
        if self.transductive is not None:
            frame["transductive"] = self.transductive.metrics["value"].to_numpy()
        return frame

    def logged_metrics(self) -> dict[str, float]:
        """MLflow metrics: `<split>/<metric>` with `_ci_low` and `_ci_high`, `<split>/tta/<metric>`,
        `<split>/calibrated/{ece,log_loss}` and `calibration/temperature`; finite values only."""
        split, values = self.split, {}
        for row in self.metrics.itertuples(index=False):
            values[f"{split}/{row.metric}"] = row.value
            values[f"{split}/{row.metric}_ci_low"] = row.ci_low
            values[f"{split}/{row.metric}_ci_high"] = row.ci_high
        if self.tta is not None:
            values.update({f"{split}/tta/{row.metric}": row.value for row in self.tta.metrics.itertuples(index=False)})
        if self.calibration.metrics is not None:
            values.update({f"{split}/calibrated/{row.metric}": row.value
                           for row in self.calibration.metrics.itertuples(index=False)
                           if row.metric in CALIBRATION})
        if self.transductive is not None:
            values.update({f"{split}/transductive/{row.metric}": row.value
                           for row in self.transductive.metrics.itertuples(index=False)})
        if self.calibration.temperature is not None:
            values["calibration/temperature"] = self.calibration.temperature
        if self.decision is not None:
            values.update(self.decision.metrics(split))
        return {k: float(v) for k, v in values.items() if v is not None and np.isfinite(v)}

    def summary(self) -> str:
        """The table the terminal shows: headline metrics with intervals, TTA and calibration beside."""
        frame = self.metrics_frame()
        shown = frame[frame["metric"].isin(REPORTED) | frame["metric"].str.startswith(SHOWN_PER_CLASS)]
        temperature = self.calibration.temperature
        lines = [f"{self.title}:"]
        header = f"  {'metric':24s} {'value [95% CI]':26s}"
        header += " with TTA" if self.tta is not None else ""
        header += f"  after T={temperature:.2f}" if temperature is not None else ""
        header += "  transductive" if self.transductive is not None else ""
        lines.append(header)
        for row in shown.itertuples(index=False):
            line = f"  {row.metric:24s} {row.value:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}]   "
            line += f" {row.with_tta:8.3f}" if self.tta is not None else ""
            line += f"  {row.temperature_scaled:9.3f}" if temperature is not None else ""
            line += f"  {row.transductive:12.3f}" if self.transductive is not None else ""
            lines.append(line)
        if self.transductive is not None:
            lines.append(f"  transductive: {self.transductive.method}, using every image of this {self.split} batch "
                         "at once (not how a single image is classified)")
        if self.decision is not None:
            rule, measures = self.decision.rule, self.decision.measures
            lines.append(f"  when the model refers (fitted on its own validation split): sets {rule.sets_note}; "
                         f"protected miss rate {rule.protect_note}; out-of-distribution gate {rule.ood_note}")
            sets = measures.sets
            if sets is not None and rule.sets is not None:
                lines.append(f"  prediction sets for {rule.sets.coverage:.0%} coverage: measured {sets.coverage:.3f} "
                             f"[{sets.coverage_low:.3f}, {sets.coverage_high:.3f}], mean size {sets.mean_size:.2f}")
            lines += [f"  {line}" for line in measures.lines()]
            probes = self.decision.probes
            if probes is not None:
                lines.append("  probes (AUROC against these cells, share rejected): " + ", ".join(
                    f"{row.name} {row.auroc:.3f} / {row.rejected:.0%}" for row in probes.itertuples(index=False)))
            if measures.patients is not None:
                shown = measures.patients.set_index("metric")
                lines.append("  per patient: " + ", ".join(
                    f"{name} {shown.loc[name, 'value']:.3f} [{shown.loc[name, 'ci_low']:.3f}, "
                    f"{shown.loc[name, 'ci_high']:.3f}]" for name in shown.index if name not in ("patients",
                                                                                               "refer_rate"))
                    + f" over {int(shown.loc['patients', 'value'])} patients")
            lines += [f"  WARNING: {warning}" for warning in self.decision.warnings]
        return "\n".join(lines)


def compute_result(*, evaluated: str, dataset: str, split: str, classes: Sequence[str], table: pd.DataFrame,
                   origin: str, bootstrap: int, seed: int, calibrate: bool, validation: pd.DataFrame | None = None,
                   tta: tuple[Sequence[str], pd.DataFrame] | None = None,
                   transductive: tuple[str, pd.DataFrame] | None = None, gradcam: CamGrid | None = None,
                   decision: DecisionResult | None = None) -> EvaluationResult:
    """Score `table` (bootstrap intervals from `bootstrap` subject-resampled replicates); with
    `calibrate`, fit a temperature on the `validation` table; score the TTA table given as
    (views, table) and the transductive table given as (method, table) beside it; `decision`: what
    the decision rule does on this split (allcls.evaluation.safeguards)."""
    classes = list(classes)
    probabilities, labels, subjects = probabilities_of(table), table["label"].to_numpy(), table["subject"].tolist()
    tta_result = None
    if tta is not None:
        views, tta_table = tta
        tta_result = TestTimeAugmentation(list(views), tta_table,
                                          metric_table(probabilities_of(tta_table), labels, subjects, classes, 0, seed))
    transductive_result = None
    if transductive is not None:
        method, corrected = transductive
        transductive_result = Transductive(method, corrected, metric_table(probabilities_of(corrected), labels,
                                                                           subjects, classes, 0, seed))
    scaling = calibration(probabilities, labels, subjects, classes, seed, validation) if calibrate \
        else Calibration("off")
    return EvaluationResult(
        evaluated=evaluated, dataset=dataset, split=split, classes=classes, table=table, origin=origin,
        metrics=metric_table(probabilities, labels, subjects, classes, bootstrap, seed),
        per_subject=per_subject_table(table, classes), calibration=scaling,
        tta=tta_result, transductive=transductive_result, gradcam=gradcam, decision=decision)


def calibration(probabilities: np.ndarray, labels: np.ndarray, subjects: Sequence, classes: list[str], seed: int,
                validation: pd.DataFrame | None) -> Calibration:
    if validation is None:
        return Calibration("not fitted (no validation predictions)")
    temperature = fit_temperature(probabilities_of(validation), validation["label"].to_numpy())
    if temperature is None:
        return Calibration("not fitted (validation all correct)")
    kept, _ = choose_temperature(probabilities_of(validation), validation["label"].to_numpy())
    status = "fitted and kept" if kept is not None else "fitted, not kept (it did not help on validation)"
    scaled = calibrated(probabilities, temperature)
    return Calibration(status, temperature, scaled, metric_table(scaled, labels, subjects, classes, 0, seed))


def per_subject_table(table: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """Accuracy per subject: cells, true class(es), accuracy, mean probability of the true class."""
    probabilities = probabilities_of(table)
    labels = table["label"].to_numpy()
    frame = pd.DataFrame({
        "subject": table["subject"].fillna("(none)").astype(str),
        "true_class": [class_names[y] for y in labels],
        "correct": probabilities.argmax(axis=1) == labels,
        "p_true": probabilities[np.arange(len(labels)), labels],
    })
    grouped = frame.groupby("subject").agg(
        cells=("correct", "size"), true_class=("true_class", lambda v: ",".join(sorted(set(v)))),
        accuracy=("correct", "mean"), mean_p_true=("p_true", "mean"))
    return grouped.reset_index().sort_values(["accuracy", "subject"], ignore_index=True)
