"""The training task: config -> data, model, trainer -> fit -> evaluate the best checkpoint -> MLflow.

Everything later stages need is logged to the run: the resolved config and overrides, the split
manifest, curves, the best checkpoint, and the prediction tables of val and test.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from hydra.errors import InstantiationException
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

from allcls import __version__
from allcls.config import JobInfo, build, instantiate_dict, job_info, resolved_yaml
from allcls.data.datamodule import CellDataModule
from allcls.ddp import distributed_job, is_rank_zero, rerun_this_job_in_ddp_children
from allcls.errors import AllclsError
from allcls.models.backbones import check_backbone_name, input_spec
from allcls.models.inference import predict_probabilities
from allcls.models.lit_classifier import LitClassifier
from allcls.models.metrics import confusion_table, metric_names, score_probabilities
from allcls.predictions import make_table, write_table
from allcls.tracking import RunMetricsLogger, Tracker, git_commit

log = logging.getLogger(__name__)

EVALUATED_SPLITS = ("val", "test")
HEADLINE_METRICS = ("accuracy", "balanced_accuracy", "f1_weighted", "auroc", "kappa")


def train(cfg: DictConfig) -> float:
    """Train one model as configured; return the best value of the monitored metric (for sweepers)."""
    with distributed_job():
        return _train(cfg)


def _train(cfg: DictConfig) -> float:
    check_config(cfg)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    datamodule.prepare()
    check_monitor(cfg, datamodule.classes)
    model = build_model(cfg, datamodule)

    if not is_rank_zero():
        # A DDP child process: its parent owns the MLflow run and all that is logged after fit.
        fit(cfg, model, datamodule, RunMetricsLogger(tracking_uri=cfg.logger.tracking_uri))
        return float("nan")

    tracker = Tracker(cfg.logger.tracking_uri, cfg.experiment_name, cfg.logger.artifact_location)
    job = job_info(cfg.paths.output_dir)
    output_dir = Path(cfg.paths.output_dir)
    with tracker.run(run_name(cfg, job), run_tags(cfg, datamodule, job), " ".join(job.overrides)) as run_id:
        try:
            log_run_inputs(tracker, run_id, cfg, datamodule, job)
            trainer = fit(cfg, model, datamodule, tracker.metrics_logger(run_id))
            return evaluate_best_checkpoint(tracker, run_id, trainer, model, datamodule, output_dir)
        finally:
            job_log = output_dir / f"{job.name}.log"
            if job_log.is_file():
                tracker.log_file(run_id, job_log, "logs")


# --- building ---------------------------------------------------------------------------------

def check_config(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg.dataset, "root"):
        raise AllclsError(f"dataset.root is not set: pass dataset.root=/path/to/{cfg.dataset.name} "
                          "(the folder in the dataset's original layout).")
    check_backbone_name(cfg.backbone.name)
    if cfg.backbone.get("weights") and not cfg.backbone.get("pretrained"):
        log.warning("backbone.weights is set but backbone.pretrained=false: the weights file is not used.")


def check_monitor(cfg: DictConfig, class_names: list[str]) -> None:
    known = ["val/loss", *metric_names(class_names, "val/")]
    if cfg.monitor not in known:
        raise AllclsError(f"monitor={cfg.monitor!r} is not a validation metric: use one of {known}.")


def build_datamodule(cfg: DictConfig) -> CellDataModule:
    reader = build(cfg.dataset.reader)
    augmentations = build(cfg.augmentation.transforms, _convert_="all")
    return build(
        cfg.data,
        reader=reader,
        input_spec=input_spec(**cfg.backbone),
        split=OmegaConf.to_container(cfg.dataset.split, resolve=True),
        roi_crop=cfg.dataset.roi_crop,
        augmentations=augmentations,
        imbalance_seed=cfg.seed,
    )


def build_model(cfg: DictConfig, datamodule: CellDataModule) -> LitClassifier:
    return build(
        cfg.model,
        backbone=OmegaConf.to_container(cfg.backbone, resolve=True),
        class_names=datamodule.classes,
        class_weights=datamodule.loss_weights(),
        _convert_="all",
    )


def fit(cfg: DictConfig, model: LitClassifier, datamodule: CellDataModule, logger: RunMetricsLogger) -> L.Trainer:
    callbacks = instantiate_dict(cfg.callbacks)
    try:
        trainer: L.Trainer = build(cfg.trainer, callbacks=callbacks, logger=logger)
    except InstantiationException as error:
        if isinstance(error.__cause__, MisconfigurationException):
            raise AllclsError(f"The trainer config cannot run on this machine: {error.__cause__} "
                              "Pick one that can, e.g. trainer=cpu.") from None
        raise
    rerun_this_job_in_ddp_children()
    trainer.fit(model, datamodule=datamodule)
    return trainer


# --- tracking ---------------------------------------------------------------------------------

def run_name(cfg: DictConfig, job: JobInfo) -> str:
    backbone = job.choices.get("backbone", cfg.backbone.name)
    augmentation = job.choices.get("augmentation", "")
    return "-".join(part for part in (backbone, augmentation, f"s{cfg.seed}") if part)


def run_tags(cfg: DictConfig, datamodule: CellDataModule, job: JobInfo) -> dict[str, str]:
    commit = git_commit()
    tags = {
        "dataset": datamodule.reader.name,
        "classes": ",".join(datamodule.classes),
        "split_hash": datamodule.split_hash,
        "backbone": cfg.backbone.name,
        "sweep_id": job.sweep_id,
        "git_commit": commit,
        "mlflow.source.git.commit": commit.removesuffix("-dirty"),
        "allcls_version": __version__,
        "stage": "train",
    }
    if job.job_num is not None:
        tags["job_num"] = str(job.job_num)
    return tags


def short_target(node: DictConfig | None) -> str:
    return str(node["_target_"]).rsplit(".", 1)[-1] if node else "none"


def strategy_name(strategy: str | DictConfig | None) -> str:
    """'ddp' for a strategy given by name, 'DDPStrategy' for one given as a config."""
    if not strategy:
        return "auto"
    return strategy if isinstance(strategy, str) else short_target(strategy)


def run_params(cfg: DictConfig, datamodule: CellDataModule, job: JobInfo) -> dict[str, object]:
    """A small flat set of the settings people compare runs by; the whole config is an artifact."""
    counts = datamodule.manifest["split"].value_counts()
    optimizer, trainer = cfg.model.optimizer, cfg.trainer
    return {
        "dataset": datamodule.reader.name,
        "backbone": cfg.backbone.name,
        "pretrained": cfg.backbone.pretrained,
        "input_size": datamodule.input_spec.size,
        "augmentation": job.choices.get("augmentation", "custom"),
        "imbalance": cfg.data.imbalance,
        "batch_size": cfg.data.batch_size,
        "optimizer": short_target(optimizer),
        "lr": optimizer.get("lr"),
        "weight_decay": optimizer.get("weight_decay"),
        "scheduler": short_target(cfg.model.get("scheduler")),
        "freeze_backbone_epochs": cfg.model.freeze_backbone_epochs,
        "max_epochs": trainer.get("max_epochs"),
        "precision": trainer.get("precision"),
        "accelerator": trainer.get("accelerator"),
        "devices": trainer.get("devices"),
        "strategy": strategy_name(trainer.get("strategy")),
        "seed": cfg.seed,
        "split_seed": cfg.dataset.split.seed,
        "n_train": int(counts.get("train", 0)),
        "n_val": int(counts.get("val", 0)),
        "n_test": int(counts.get("test", 0)),
    }


def log_run_inputs(tracker: Tracker, run_id: str, cfg: DictConfig, datamodule: CellDataModule, job: JobInfo) -> None:
    tracker.log_params(run_id, run_params(cfg, datamodule, job))
    tracker.log_text(run_id, resolved_yaml(cfg), "config/config.yaml")
    tracker.log_text(run_id, OmegaConf.to_yaml(job.overrides), "config/overrides.yaml")
    manifest = datamodule.write_manifest(Path(cfg.paths.output_dir) / "split_manifest.csv")
    tracker.log_file(run_id, manifest, "data")
    if datamodule.unreadable:
        tracker.log_text(run_id, "".join(f"{path}\t{problem}\n" for path, problem in datamodule.unreadable),
                         "data/unreadable_images.txt")


def evaluate_best_checkpoint(tracker: Tracker, run_id: str, trainer: L.Trainer, model: LitClassifier,
                             datamodule: CellDataModule, output_dir: Path) -> float:
    """Reload the best checkpoint; write the val and test prediction tables from one single-device
    pass over each whole split; log test metrics and confusion matrices; return the best score."""
    checkpoint = trainer.checkpoint_callback
    best_path = checkpoint.best_model_path if checkpoint else ""
    if best_path:
        state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict(state)
        tracker.log_file(run_id, best_path, "checkpoints")
    else:
        log.warning("No best checkpoint was saved (did validation run?): evaluating the final weights.")
    device = trainer.strategy.root_device
    index = datamodule.class_index()
    for split in EVALUATED_SPLITS:
        samples = datamodule.split_samples(split)
        probabilities = predict_probabilities(model, datamodule.eval_dataloader(split), device)
        labels = [index[s.label] for s in samples]
        table = make_table([s.sample_id for s in samples], [s.subject for s in samples], labels,
                           probabilities, datamodule.classes)
        tracker.log_file(run_id, write_table(table, output_dir / "predictions" / f"{split}.parquet"), "predictions")
        tracker.log_table(run_id, confusion_table(probabilities, labels, datamodule.classes),
                          f"confusion_matrix/{split}.csv")
        if split == "test":
            scores = score_probabilities(probabilities, labels, datamodule.classes, "test/")
            tracker.log_metrics(run_id, scores, step=trainer.global_step)
            log.info("Best checkpoint on test: %s", ", ".join(f"{k}={scores[f'test/{k}']:.3f}" for k in HEADLINE_METRICS))
    score = checkpoint.best_model_score if checkpoint else None
    return float(score) if score is not None else float("nan")
