"""What an evaluation found, computed by one pure function from prediction tables: metrics with
bootstrap intervals, accuracy per subject, calibration (temperature scaling), test-time
augmentation side by side, and the Grad-CAM grid. Nothing here reads images or talks to MLflow."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from allcls.evaluation.gradcam import CamGrid
from allcls.inference import conformal
from allcls.inference.calibration import calibrated, fit_temperature
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
        return f"{self.temperature:.4f}" if self.temperature is not None else self.status


@dataclass(frozen=True)
class TestTimeAugmentation:
    """The same split predicted as the average over several views of each image."""

    views: list[str]
    table: pd.DataFrame
    metrics: pd.DataFrame  # no intervals


@dataclass(frozen=True)
class PredictionSets:
    """Split-conformal prediction sets of the evaluated split (allcls.evaluation.conformal), fitted
    on the validation predictions (temperature-scaled where a temperature was fitted)."""

    target: float  # the coverage asked for
    threshold: float
    members: np.ndarray  # (images, classes) bool
    measured: conformal.SetMeasures  # on the evaluated split

    def metrics(self, split: str) -> dict[str, float]:
        measured = self.measured
        return {f"{split}/conformal/coverage": measured.coverage, f"{split}/conformal/coverage_ci_low":
                measured.coverage_low, f"{split}/conformal/coverage_ci_high": measured.coverage_high,
                f"{split}/conformal/mean_set_size": measured.mean_size,
                f"{split}/conformal/refer_rate": measured.refer_rate, "conformal/threshold": self.threshold,
                "conformal/target_coverage": self.target}


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
    sets: PredictionSets | None = None
    sets_note: str = ""  # why there are no prediction sets, when they were asked for
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
        if self.sets is not None:
            values.update(self.sets.metrics(split))
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
        if self.sets_note:
            lines.append(f"  no prediction sets: {self.sets_note}")
        if self.sets is not None:
            measured = self.sets.measured
            lines.append(f"  prediction sets for {self.sets.target:.0%} coverage: measured {measured.coverage:.3f} "
                         f"[{measured.coverage_low:.3f}, {measured.coverage_high:.3f}], mean size "
                         f"{measured.mean_size:.2f}, {measured.refer_rate:.1%} of images referred "
                         "(more than one class)")
        return "\n".join(lines)


def compute_result(*, evaluated: str, dataset: str, split: str, classes: Sequence[str], table: pd.DataFrame,
                   origin: str, bootstrap: int, seed: int, calibrate: bool, validation: pd.DataFrame | None = None,
                   tta: tuple[Sequence[str], pd.DataFrame] | None = None,
                   transductive: tuple[str, pd.DataFrame] | None = None, gradcam: CamGrid | None = None,
                   coverage: float | None = None) -> EvaluationResult:
    """Score `table` (bootstrap intervals from `bootstrap` subject-resampled replicates); with
    `calibrate`, fit a temperature on the `validation` table; score the TTA table given as
    (views, table) and the transductive table given as (method, table) beside it; with `coverage`,
    prediction sets fitted on the `validation` table."""
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
    sets, note = None, ""
    if coverage is not None and validation is None:
        note = "no validation predictions to fit them on"
    elif coverage is not None:
        sets = prediction_sets_of(probabilities, labels, subjects, validation, scaling.temperature, coverage,
                                  bootstrap, seed)
        if sets is None:
            note = (f"{coverage:.0%} coverage needs {conformal.units_needed(coverage)} validation subjects or more; "
                    f"lower conformal.coverage")
    return EvaluationResult(
        evaluated=evaluated, dataset=dataset, split=split, classes=classes, table=table, origin=origin,
        metrics=metric_table(probabilities, labels, subjects, classes, bootstrap, seed),
        per_subject=per_subject_table(table, classes), calibration=scaling,
        tta=tta_result, transductive=transductive_result, gradcam=gradcam, sets=sets, sets_note=note)


def prediction_sets_of(probabilities: np.ndarray, labels: np.ndarray, subjects: Sequence, validation: pd.DataFrame,
                       temperature: float | None, coverage: float, replicates: int, seed: int
                       ) -> PredictionSets | None:
    """Sets fitted on the validation table for `coverage`, and what they measure on this split;
    None when validation has too few subjects for that coverage."""
    threshold = conformal.fit_threshold(calibrated(probabilities_of(validation), temperature),
                                        validation["label"].to_numpy(), validation["subject"].tolist(), coverage)
    if threshold is None:
        return None
    members = conformal.prediction_sets(calibrated(probabilities, temperature), threshold)
    measured = conformal.measure_sets(members, labels, subjects, replicates, seed)
    return PredictionSets(coverage, threshold, members, measured)


def calibration(probabilities: np.ndarray, labels: np.ndarray, subjects: Sequence, classes: list[str], seed: int,
                validation: pd.DataFrame | None) -> Calibration:
    if validation is None:
        return Calibration("not fitted (no validation predictions)")
    temperature = fit_temperature(probabilities_of(validation), validation["label"].to_numpy())
    if temperature is None:
        return Calibration("not fitted (validation all correct)")
    scaled = calibrated(probabilities, temperature)
    return Calibration("fitted", temperature, scaled, metric_table(scaled, labels, subjects, classes, 0, seed))


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
