"""Writing an evaluation's result: its tables, plots, prediction tables and Grad-CAM grid as files,
and all of it as one evaluation run nested under the evaluated run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from allcls.evaluation import plots
from allcls.evaluation.gradcam import overlay_grid
from allcls.evaluation.result import EvaluationResult
from allcls.evaluation.settings import EvaluateSettings
from allcls.evaluation.sources import ModelSource
from allcls.inference import conformal
from allcls.jobs.signals import stop_signals_raise
from allcls.predictions import probabilities_of, write_table
from allcls.tracking import schema as run_schema
from allcls.tracking.tracker import Experiment, Tracker


def write_files(result: EvaluationResult, output_dir: Path) -> dict[str, list[Path]]:
    """Every file of the result, by the artifact folder it goes to (metrics, plots, predictions, gradcam)."""
    split, classes, title = result.split, result.classes, result.title
    folders = {name: output_dir / name for name in ("metrics", "plots", "predictions", "gradcam")}
    for name, folder in folders.items():
        if name != "gradcam" or result.gradcam is not None:
            folder.mkdir(parents=True, exist_ok=True)
    probabilities, labels = probabilities_of(result.table), result.table["label"].to_numpy()
    result.metrics_frame().to_csv(folders["metrics"] / "metrics.csv", index=False)
    result.per_subject.to_csv(folders["metrics"] / "per_subject.csv", index=False)
    curves = {"as predicted": probabilities}
    if result.calibration.probabilities is not None:
        curves[f"temperature-scaled (T={result.calibration.temperature:.2f})"] = result.calibration.probabilities
    if result.tta is not None:
        curves["with TTA"] = probabilities_of(result.tta.table)
    if result.transductive is not None:
        curves["transductive"] = probabilities_of(result.transductive.table)
    plot_dir = folders["plots"]
    files = {
        "metrics": [folders["metrics"] / "metrics.csv", folders["metrics"] / "per_subject.csv"],
        "plots": [
            plots.confusion_matrices(probabilities, labels, classes, title, plot_dir / "confusion_matrix.png"),
            plots.roc_curves(probabilities, labels, classes, title, plot_dir / "roc.png"),
            plots.precision_recall_curves(probabilities, labels, classes, title, plot_dir / "precision_recall.png"),
            plots.reliability_diagram(curves, labels, title, plot_dir / "reliability.png"),
        ],
        "predictions": [write_table(result.table, folders["predictions"] / f"{split}.parquet")],
    }
    if result.table["subject"].notna().any():  # datasets without patient ids (the 4-class one) have no per-subject view
        files["plots"].append(plots.per_subject_chart(result.per_subject, title, plot_dir / "per_subject.png"))
    if result.tta is not None:
        files["predictions"].append(write_table(result.tta.table, folders["predictions"] / f"{split}_tta.parquet"))
    if result.transductive is not None:
        files["predictions"].append(write_table(result.transductive.table,
                                                folders["predictions"] / f"{split}_transductive.parquet"))
    if result.decision is not None:
        decision_files(result, folders, files)
    if result.gradcam is not None:
        files["gradcam"] = [overlay_grid(result.gradcam, folders["gradcam"] / f"{split}.png")]
    return files


def decision_files(result: EvaluationResult, folders: dict[str, Path], files: dict[str, list[Path]]) -> None:
    """The decision rule's files: each cell's decision, the gate on the probes, the patient-level metrics."""
    assert result.decision is not None
    classes, split, decision = result.classes, result.split, result.decision
    decisions = decision.decisions
    assert decision.labels is not None
    frame = pd.DataFrame({"sample_id": list(decision.sample_ids), "true": [classes[k] for k in decision.labels],
                          "label": [classes[k] for k in decisions.labels],
                          "set": conformal.set_labels(decisions.members, classes), "refer": decisions.refer,
                          "refer_reason": decisions.reasons, "ood_score": result.decision.ood_scores})
    files["predictions"].append(folders["predictions"] / f"{split}_decisions.csv")
    frame.to_csv(files["predictions"][-1], index=False)
    if result.decision.probes is not None:
        files["metrics"].append(folders["metrics"] / "ood_probes.csv")
        result.decision.probes.to_csv(files["metrics"][-1], index=False)
    if result.decision.measures.patients is not None:
        files["metrics"].append(folders["metrics"] / "patients.csv")
        result.decision.measures.patients.to_csv(files["metrics"][-1], index=False)


def log_result(tracker: Tracker, experiment: Experiment, source: ModelSource, result: EvaluationResult,
               settings: EvaluateSettings, split_hash: str | None) -> str:
    """The evaluation run (nested under the evaluated run, when there is one), with every file of
    the result; returns its id. `split_hash`: of the split evaluated, when it is the model's own."""
    files = write_files(result, settings.job.output_dir)
    transductive = result.transductive.method if result.transductive is not None else None
    tags = run_schema.evaluation_tags(source.kind, result.dataset, result.classes, result.split, source.run_id,
                                      split_hash, transductive)
    name = run_schema.evaluation_run_name(result.split, result.dataset, result.tta is not None,
                                          transductive is not None)
    opened = tracker.stage_run(experiment, run_schema.EVALUATE, name, tags, settings.job, parent_run_id=source.run_id)
    with opened as run, stop_signals_raise():
        run.log_params(run_schema.evaluation_params(
            source.name, result.split, result.dataset, len(result.table), result.origin,
            result.tta.views if result.tta is not None else None, result.calibration.param, settings.bootstrap,
            settings.seed, transductive, sets_param(result)))
        run.log_metrics(result.logged_metrics())
        for folder, paths in files.items():
            for path in paths:
                run.log_file(path, folder)
    return run.run_id


def sets_param(result: EvaluationResult) -> str:
    return result.decision.param() if result.decision is not None else "off"
