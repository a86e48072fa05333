"""The evaluation task behind evaluate.py.

A run's logged prediction tables are used as they are (nothing is recomputed); models are loaded
from their checkpoints only for what needs them: another split or dataset, test-time
augmentation, Grad-CAM. Results go to a new evaluation run nested under the evaluated run, so
the training run stays the record of training and every evaluation (split, dataset, TTA) is its
own comparable run.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from allcls import __version__
from allcls.config import build, job_info, resolved_yaml
from allcls.data.datamodule import CellDataModule
from allcls.errors import AllclsError
from allcls.evaluation import plots
from allcls.evaluation.calibration import apply_temperature, fit_temperature
from allcls.evaluation.sources import ModelSource, resolve_source
from allcls.evaluation.uncertainty import metric_table, per_subject_table
from allcls.explain import choose_samples, combine_maps, gradcam, overlay_grid, to_display
from allcls.models.backbones import input_spec
from allcls.models.inference import check_views, predict_probabilities
from allcls.models.lit_classifier import LitClassifier
from allcls.predictions import class_names_of, make_table, probabilities_of, write_table
from allcls.scoring import combine
from allcls.tracking import Tracker, browse_command, git_commit

log = logging.getLogger(__name__)

SPLIT_CHOICES = ("train", "val", "test", "all")
SHOWN = ("f1_weighted", "balanced_accuracy", "accuracy", "auroc", "kappa", "ece", "log_loss")


def label_index(dataset_classes: list[str], model_classes: list[str], class_map: dict[str, str]) -> dict[str, int]:
    """Dataset class name -> the model's class index, through `class_map` (default: same name)."""
    mapping = {c: class_map.get(c, c) for c in dataset_classes}
    unmapped = [c for c, target in mapping.items() if target not in model_classes]
    if unmapped:
        raise AllclsError(
            f"The dataset's class(es) {unmapped} are not classes of the model {model_classes}. Map each one to a "
            f"model class, e.g. class_map.{unmapped[0]}={model_classes[0]}, or evaluate a model trained on them.")
    return {c: model_classes.index(target) for c, target in mapping.items()}


class Predictor:
    """Loads the source's models and the data each of them expects, once, and predicts splits."""

    def __init__(self, tracker: Tracker, source: ModelSource, cfg: DictConfig, workdir: Path):
        self.tracker, self.source, self.cfg, self.workdir = tracker, source, cfg, workdir
        self.device = torch.device("cuda" if torch.cuda.is_available() and cfg.device != "cpu" else "cpu")
        self.models: dict[int, LitClassifier] = {}
        self.datamodules: dict[tuple[int, bool], CellDataModule] = {}

    @property
    def weights(self) -> np.ndarray:
        weights = np.array([m.weight for m in self.source.members], dtype=np.float64)
        return weights / weights.sum()

    def model(self, index: int) -> LitClassifier:
        if index not in self.models:
            member = self.source.members[index]
            self.models[index] = member.load(self.tracker, self.workdir, self.device)
        return self.models[index]

    def datamodule(self, index: int, own: bool) -> CellDataModule:
        """The member's data: its own training dataset and split (`own`), or the evaluated dataset."""
        key = (index, own)
        if key in self.datamodules:
            return self.datamodules[key]
        member, cfg = self.source.members[index], self.cfg
        model = self.model(index)
        if own:
            if member.train_config is None:
                raise AllclsError("A bare checkpoint has no dataset of its own: pass dataset=<name> dataset.root=<path>.")
            dataset = OmegaConf.create(OmegaConf.to_container(member.train_config.dataset))
            if cfg.dataset_root:
                dataset.reader.root = cfg.dataset_root
            split, roi_crop = {"manifest": str(member.manifest)}, dataset.roi_crop
        else:
            dataset = cfg.dataset
            split = None if cfg.split == "all" else OmegaConf.to_container(dataset.split, resolve=True)
            roi_crop = dataset.roi_crop
        if OmegaConf.is_missing(dataset, "root"):
            raise AllclsError(f"dataset.root is not set: pass dataset.root=/path/to/{dataset.name}.")
        # Members of an ensemble read the same images: decoding them all once is enough, where the split
        # does not depend on content hashes (a manifest, or no split at all).
        already_checked = any(other == own for _, other in self.datamodules) and (own or cfg.split == "all")
        module = CellDataModule(build(dataset.reader), input_spec(**model.hparams["backbone"]), split,
                                roi_crop=roi_crop, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                                verify_images=not already_checked)
        module.prepare()
        if not own:
            module.label_index = label_index(module.classes, self.source.classes, dict(cfg.class_map or {}))
        self.datamodules[key] = module
        return module

    def table(self, split: str, own: bool, views=("identity",)) -> pd.DataFrame:
        """The source's prediction table for `split`: each member on its own input, combined."""
        probabilities, samples, labels = [], None, None
        for index in range(len(self.source.members)):
            module = self.datamodule(index, own)
            samples = module.split_samples(split)
            labels = [module.class_index()[s.label] for s in samples]
            probabilities.append(predict_probabilities(self.model(index), module.eval_dataloader(split),
                                                       self.device, views))
        combined = combine(np.stack(probabilities), self.weights, self.source.rule)
        return make_table([s.sample_id for s in samples], [s.subject for s in samples], labels, combined,
                          self.source.classes)

    def explain(self, split: str, own: bool, table: pd.DataFrame, path: Path) -> Path:
        """A Grad-CAM grid for chosen samples, explaining the class the source predicted."""
        settings = self.cfg.gradcam
        probabilities = probabilities_of(table)
        labels, predicted = table["label"].to_numpy(), probabilities.argmax(axis=1)
        chosen = choose_samples(labels, predicted, int(settings.samples_per_class), int(self.cfg.seed),
                                list(settings.sample_ids or []), table["sample_id"].tolist())
        maps, display = [], None
        for index in range(len(self.source.members)):
            module = self.datamodule(index, own)
            dataset = module.dataset(split)
            images = torch.stack([dataset[int(i)][0] for i in chosen])
            model = self.model(index).to("cpu")  # Grad-CAM needs gradients: a few images, CPU is fine
            maps.append(gradcam(model.model, images, predicted[chosen]))
            if display is None:
                display = to_display(images, module.input_spec)
        combined = combine_maps(maps, self.weights, display.shape[1])
        classes = self.source.classes
        captions = [f"true {classes[labels[i]]} / pred {classes[predicted[i]]} ({probabilities[i, predicted[i]]:.2f})"
                    for i in chosen]
        return overlay_grid(display, combined, captions, f"Grad-CAM of {self.source.name} on {split}: "
                            "where it looks for the predicted class", path)


def evaluate(cfg: DictConfig) -> float:
    """Evaluate as configured (conf/evaluate.yaml); return the weighted F1 of the evaluated split."""
    if cfg.split not in SPLIT_CHOICES:
        raise AllclsError(f"split={cfg.split!r} is not one of {list(SPLIT_CHOICES)}.")
    check_views(cfg.tta.views)
    with tempfile.TemporaryDirectory(prefix="allcls-evaluate-") as workdir:  # checkpoints, configs, tables
        return _evaluate(cfg, Path(workdir))


def _evaluate(cfg: DictConfig, workdir: Path) -> float:
    views = list(cfg.tta.views) if cfg.tta.enabled else None
    other_dataset = cfg.get("dataset") is not None
    output_dir = Path(cfg.paths.output_dir)
    default_experiment = cfg.dataset.name if other_dataset else "evaluation"
    tracker = Tracker(cfg.logger.tracking_uri, cfg.experiment_name or default_experiment, cfg.logger.artifact_location)
    source = resolve_source(tracker, cfg.run_id, cfg.ckpt_path, workdir)
    if source.kind == "checkpoint" and not other_dataset:
        raise AllclsError("ckpt_path needs the data to evaluate on: pass dataset=<name> dataset.root=<path>.")
    if source.experiment_id is not None:
        tracker = Tracker(cfg.logger.tracking_uri, tracker.client.get_experiment(source.experiment_id).name)
    predictor = Predictor(tracker, source, cfg, workdir)
    own = not other_dataset
    split, classes = cfg.split, source.classes

    table = source.logged_table(tracker, split, workdir) if own else None
    recomputed = table is None
    if recomputed:
        table = predictor.table(split, own)
    if class_names_of(table) != classes:
        raise AllclsError(f"The predictions have classes {class_names_of(table)}, the model {classes}.")
    tta_table = predictor.table(split, own, views) if views else None
    temperature = fit_source_temperature(predictor, source, tracker, cfg, workdir) \
        if cfg.calibration.temperature_scaling else None

    probabilities, labels = probabilities_of(table), table["label"].to_numpy()
    metrics = metric_table(probabilities, labels, table["subject"].tolist(), classes, int(cfg.bootstrap), int(cfg.seed))
    if tta_table is not None:
        tta = metric_table(probabilities_of(tta_table), labels, table["subject"].tolist(), classes, 0, int(cfg.seed))
        metrics["with_tta"] = tta["value"].to_numpy()
    calibrated = None
    if temperature is not None:
        calibrated = apply_temperature(probabilities, temperature)
        scaled = metric_table(calibrated, labels, table["subject"].tolist(), classes, 0, int(cfg.seed))
        metrics["temperature_scaled"] = scaled["value"].to_numpy()
    per_subject = per_subject_table(table, classes)
    dataset_name = predictor.datamodule(0, False).reader.name if other_dataset else source.tags.get("dataset", "")
    print("\n" + summary_text(metrics, source.name, dataset_name, split, temperature) + "\n", flush=True)

    files = write_outputs(output_dir, cfg, predictor, own, table, tta_table, calibrated, metrics, per_subject,
                          dataset_name, temperature)
    job = job_info(str(output_dir))
    tags = {"stage": "evaluate", "evaluated_kind": source.kind, "dataset": dataset_name, "classes": ",".join(classes),
            "split": split, "sweep_id": job.sweep_id, "git_commit": git_commit(), "allcls_version": __version__}
    if source.run_id:
        tags.update({"evaluated_run_id": source.run_id, "mlflow.parentRunId": source.run_id})
    if own and "split_hash" in source.tags:
        tags["split_hash"] = source.tags["split_hash"]
    name = f"eval-{split}-{dataset_name}" + ("-tta" if views else "")
    with tracker.run(name, tags, " ".join(job.overrides)) as run_id:
        tracker.log_params(run_id, {
            "evaluated": source.name, "split": split, "dataset": dataset_name, "n_samples": len(table),
            "predictions": "recomputed" if recomputed else "logged by the evaluated run",
            "tta": ",".join(views) if views else "off",
            "temperature": f"{temperature:.4f}" if temperature is not None else
            ("not fitted (validation all correct)" if cfg.calibration.temperature_scaling else "off"),
            "bootstrap": cfg.bootstrap, "seed": cfg.seed})
        tracker.log_metrics(run_id, metric_values(metrics, split, temperature))
        tracker.log_text(run_id, resolved_yaml(cfg), "config/config.yaml")
        for folder, paths in files.items():
            for path in paths:
                tracker.log_file(run_id, path, folder)
    print(f"Evaluation run {run_id} in experiment {tracker.experiment_name!r}"
          + (f", nested under run {source.run_id}" if source.run_id else "")
          + f".\nBrowse: {browse_command(tracker.tracking_uri)}", flush=True)
    return float(metrics.set_index("metric").loc["f1_weighted", "value"])


def fit_source_temperature(predictor: Predictor, source: ModelSource, tracker: Tracker, cfg: DictConfig,
                           workdir: Path) -> float | None:
    """Temperature fitted on the validation predictions of the model's own data (logged when the
    run logged them); a bare checkpoint uses the validation split of the evaluated dataset."""
    table = source.logged_table(tracker, "val", workdir)
    if table is None:
        has_own = all(m.train_config is not None for m in source.members)
        if not has_own and cfg.split == "all":
            log.warning("No validation predictions to fit a temperature on: calibration is skipped.")
            return None
        table = predictor.table("val", own=has_own)
    temperature = fit_temperature(probabilities_of(table), table["label"].to_numpy())
    if temperature is None:
        log.warning("Every validation prediction is right: a temperature cannot be fitted; calibration is skipped.")
    else:
        log.info("Temperature fitted on validation: T = %.3f", temperature)
    return temperature


def metric_values(metrics: pd.DataFrame, split: str, temperature: float | None) -> dict[str, float]:
    values = {}
    for row in metrics.itertuples(index=False):
        values[f"{split}/{row.metric}"] = row.value
        values[f"{split}/{row.metric}_ci_low"] = row.ci_low
        values[f"{split}/{row.metric}_ci_high"] = row.ci_high
        if "with_tta" in metrics:
            values[f"{split}/tta/{row.metric}"] = row.with_tta
        if "temperature_scaled" in metrics and row.metric in ("ece", "log_loss"):
            values[f"{split}/calibrated/{row.metric}"] = row.temperature_scaled
    if temperature is not None:
        values["calibration/temperature"] = temperature
    return {k: float(v) for k, v in values.items() if v is not None and np.isfinite(v)}


def summary_text(metrics: pd.DataFrame, source_name: str, dataset: str, split: str, temperature: float | None) -> str:
    shown = metrics[metrics["metric"].isin(SHOWN) | metrics["metric"].str.startswith(("sensitivity_", "specificity_"))]
    lines = [f"{source_name} on {dataset} / {split}:"]
    header = f"  {'metric':24s} {'value [95% CI]':26s}"
    header += " with TTA" if "with_tta" in shown else ""
    header += f"  after T={temperature:.2f}" if temperature is not None else ""
    lines.append(header)
    for row in shown.itertuples(index=False):
        line = f"  {row.metric:24s} {row.value:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}]   "
        line += f" {row.with_tta:8.3f}" if "with_tta" in shown else ""
        line += f"  {row.temperature_scaled:9.3f}" if temperature is not None else ""
        lines.append(line)
    return "\n".join(lines)


def write_outputs(output_dir: Path, cfg: DictConfig, predictor: Predictor, own: bool, table: pd.DataFrame,
                  tta_table: pd.DataFrame | None, calibrated: np.ndarray | None, metrics: pd.DataFrame,
                  per_subject: pd.DataFrame, dataset: str, temperature: float | None) -> dict[str, list[Path]]:
    """Tables, plots, predictions and Grad-CAM, grouped by the artifact folder they go to."""
    split, classes = cfg.split, predictor.source.classes
    title = f"{predictor.source.name} on {dataset} / {split}"
    folders = {name: output_dir / name for name in ("metrics", "plots", "predictions", "gradcam")}
    for name, folder in folders.items():
        if name != "gradcam" or cfg.gradcam.enabled:
            folder.mkdir(parents=True, exist_ok=True)
    probabilities, labels = probabilities_of(table), table["label"].to_numpy()
    metrics.to_csv(folders["metrics"] / "metrics.csv", index=False)
    per_subject.to_csv(folders["metrics"] / "per_subject.csv", index=False)
    curves = {"as predicted": probabilities}
    if calibrated is not None:
        curves[f"temperature-scaled (T={temperature:.2f})"] = calibrated
    if tta_table is not None:
        curves["with TTA"] = probabilities_of(tta_table)
    files = {
        "metrics": [folders["metrics"] / "metrics.csv", folders["metrics"] / "per_subject.csv"],
        "plots": [
            plots.confusion_matrices(probabilities, labels, classes, title, folders["plots"] / "confusion_matrix.png"),
            plots.roc_curves(probabilities, labels, classes, title, folders["plots"] / "roc.png"),
            plots.precision_recall_curves(probabilities, labels, classes, title, folders["plots"] / "precision_recall.png"),
            plots.reliability_diagram(curves, labels, title, folders["plots"] / "reliability.png"),
        ],
        "predictions": [write_table(table, folders["predictions"] / f"{split}.parquet")],
    }
    if table["subject"].notna().any():  # datasets without patient ids (the 4-class one) have no per-subject view
        files["plots"].append(plots.per_subject_chart(per_subject, title, folders["plots"] / "per_subject.png"))
    if tta_table is not None:
        files["predictions"].append(write_table(tta_table, folders["predictions"] / f"{split}_tta.parquet"))
    if cfg.gradcam.enabled:
        files["gradcam"] = [predictor.explain(split, own, table, folders["gradcam"] / f"{split}.png")]
    return files
