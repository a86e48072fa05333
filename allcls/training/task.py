"""The training task: config -> prepared data, model, trainer -> fit -> evaluate the best
checkpoint -> MLflow.

Everything later stages need is logged to the run: the resolved config and overrides, the split
manifest, curves, the best checkpoint, and the prediction tables of val and test.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from allcls.config.hydra_job import job_info
from allcls.config.ranges import TRAIN, check_ranges
from allcls.config.sections import build, instantiate_dict, typed
from allcls.data.datamodule import CellDataModule, choose_pipeline
from allcls.data.packed_cache import check_cache_dir
from allcls.data.preparation import ImageChecks, PreparedDataset, prepare_dataset
from allcls.data.splits import SplitSpec
from allcls.errors import AllclsError
from allcls.inference.views import predict_probabilities
from allcls.jobs.ddp import distributed_job, is_rank_zero, rerun_this_job_in_ddp_children
from allcls.jobs.resume import RUN_FILE, CheckpointOnStop, refuse_changed_params, remember_the_run, resume_point
from allcls.jobs.signals import Terminated, stops_wait_for_the_batch
from allcls.metrics.names import metric_names, mode
from allcls.metrics.vectorised import confusion_frame, table_scores
from allcls.models.backbones import BackboneSpec, input_spec
from allcls.models.lit_classifier import LitClassifier
from allcls.predictions import make_table, write_table
from allcls.tracking import schema as run_schema
from allcls.tracking.journal import Journal
from allcls.tracking.store import check_reachable, is_local_store
from allcls.tracking.tracker import Tracker

log = logging.getLogger(__name__)

EVALUATED_SPLITS = ("val", "test")
HEADLINE_METRICS = ("accuracy", "balanced_accuracy", "f1_weighted", "auroc", "kappa")


def train(cfg: DictConfig) -> float:
    """Train one model as configured; return the best value of the monitored metric (for sweepers)."""
    with distributed_job():
        return _train(cfg)


def _train(cfg: DictConfig) -> float:
    point = resume_point(cfg)
    if point is not None:
        cfg = point.config  # the job's own config, into its own folder
    backbone = check_config(cfg)
    if is_rank_zero() and point is None:
        refuse_a_used_output_dir(Path(cfg.paths.output_dir))
        check_reachable(cfg.logger.tracking_uri)  # before any data is read
    L.seed_everything(cfg.seed, workers=True)
    dataset = prepare(cfg)
    check_monitor(cfg, list(dataset.classes))
    datamodule = build_datamodule(cfg, dataset, backbone)
    model = build_model(cfg, datamodule, backbone)
    checkpoint = point.checkpoint if point else None

    if not is_rank_zero():
        # A DDP child process: its parent owns the MLflow run and all that is logged after fit.
        fit(cfg, model, datamodule, RunMetricsLogger(tracking_uri=cfg.logger.tracking_uri), checkpoint)
        return float("nan")

    tracker = Tracker(cfg.logger.tracking_uri, cfg.experiment_name, cfg.logger.artifact_location)
    job = point.job if point else job_info(cfg.paths.output_dir)
    output_dir = Path(cfg.paths.output_dir)
    tracker.journal = Journal(output_dir)  # if the server goes away mid-run, the job goes on
    if not is_local_store(tracker.tracking_uri):  # and notices within seconds, not after MLflow's minutes of retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    if point is None:
        opened = tracker.stage_run(run_schema.TRAIN, run_schema.train_run_name(cfg, job),
                                   run_schema.train_tags(cfg, dataset), cfg)
    else:
        opened = tracker.resumed_run(point.run_id, resumed_in=job_info().sweep_id)
    with opened as run_id:
        try:
            params = run_schema.train_params(cfg, dataset, datamodule.input_spec.size, job, datamodule.pipeline)
            if point is None:
                remember_the_run(output_dir, run_id, cfg, job)
                tracker.log_params(run_id, params)
                log_dataset(tracker, run_id, dataset, output_dir)
            else:
                tracker.log_params(run_id, refuse_changed_params(run_id, tracker.get_run(run_id).data.params, params))
                log.info("Resuming from %s", checkpoint)
            logger = RunMetricsLogger(tracker, run_id=run_id, tracking_uri=tracker.tracking_uri,
                                      experiment_name=tracker.experiment_name)
            trainer = fit(cfg, model, datamodule, logger, checkpoint)
            score = evaluate_best_checkpoint(tracker, run_id, trainer, model, datamodule, output_dir)
        finally:
            log_job_logs(tracker, run_id, output_dir, job.name, resumed=point is not None)
    if tracker.journal.active:
        log.warning("The run's end is not on the tracking server yet: once it is back, "
                    "allcls-runs upload %s", output_dir)
    return score


def log_job_logs(tracker: Tracker, run_id: str, output_dir: Path, name: str, resumed: bool) -> None:
    """The job's log file and profile (debug=profiler); a resumed job's log (in this launch's own
    folder) goes to logs/resumed/."""
    job_log = output_dir / f"{name}.log"
    if job_log.is_file():
        tracker.log_file(run_id, job_log, "logs")
    if (profile := output_dir / "fit-profile.txt").is_file():
        tracker.log_file(run_id, profile, "profile")
    if resumed and HydraConfig.initialized():
        launch_log = Path(HydraConfig.get().runtime.output_dir) / f"{name}.log"
        if launch_log.is_file():
            tracker.log_file(run_id, launch_log, f"logs/resumed/{launch_log.parent.name}")


# --- building ---------------------------------------------------------------------------------

def refuse_a_used_output_dir(output_dir: Path) -> None:
    """A job's folder is its record: a second job there would overwrite its checkpoints and
    prediction tables (the default folder names the microsecond it started; a fixed hydra.run.dir does not)."""
    used = sorted(str(p.relative_to(output_dir)) for pattern in ("checkpoints/*", "predictions/*", str(RUN_FILE))
                  for p in output_dir.glob(pattern) if p.is_file())
    if used:
        raise AllclsError(f"{output_dir} already holds another job's files ({', '.join(used[:3])}"
                          f"{', ...' if len(used) > 3 else ''}): this job would overwrite them. Give it a new "
                          "folder (leave hydra.run.dir at its default, or choose another), or move that one away.")


def check_config(cfg: DictConfig) -> BackboneSpec:
    """Refuse what would fail later, before anything is read; returns the backbone's settings."""
    check_ranges(cfg, TRAIN)
    if OmegaConf.is_missing(cfg.dataset, "root"):
        raise AllclsError(f"dataset.root is not set: pass dataset.root=/path/to/{cfg.dataset.name} "
                          "(the folder in the dataset's original layout).")
    backbone = BackboneSpec.of(OmegaConf.to_container(cfg.backbone, resolve=True))
    input_spec(backbone)  # an unknown backbone name or a bad input size
    choose_pipeline(cfg.data.pipeline, build_augmentations(cfg))  # a value albumentations refuses, or no batch form
    if cfg.data.cache_dir:
        check_cache_dir(cfg.data.cache_dir)
    if backbone.weights and not backbone.pretrained:
        log.warning("backbone.weights is set but backbone.pretrained=false: the weights file is not used.")
    return backbone


def check_monitor(cfg: DictConfig, class_names: list[str]) -> None:
    known = ["val/loss", *metric_names(class_names, "val/")]
    if cfg.monitor not in known:
        raise AllclsError(f"monitor={cfg.monitor!r} is not a validation metric: use one of {known}.")
    if cfg.monitor_mode != mode(cfg.monitor):
        raise AllclsError(f"monitor_mode={cfg.monitor_mode!r} is the wrong way round for {cfg.monitor} "
                          f"({mode(cfg.monitor)} is better): leave monitor_mode out, it follows monitor.")


def prepare(cfg: DictConfig) -> PreparedDataset:
    split = typed(SplitSpec, OmegaConf.to_container(cfg.dataset.split, resolve=True), "dataset.split")
    return prepare_dataset(build(cfg.dataset.reader), split, ImageChecks.of(cfg.dataset))


def build_augmentations(cfg: DictConfig) -> list:
    """The augmentation's transforms; one that refuses its settings is one line naming it and why."""
    for index, node in enumerate(cfg.augmentation.transforms or []):
        try:
            build(node, _convert_="all")
        except InstantiationException as error:
            cause = error.__cause__ or error
            why = " ".join(line.split(" [type=")[0].strip() for line in str(cause).splitlines()
                           if line.strip() and not line.strip().startswith("For further information")).rstrip(".")
            raise AllclsError(f"augmentation.transforms[{index}] ({node.get('_target_')}) refuses its settings: {why}. "
                              "Fix the value in the override or in conf/augmentation/.") from None
    return build(cfg.augmentation.transforms, _convert_="all")


def build_datamodule(cfg: DictConfig, dataset: PreparedDataset, backbone: BackboneSpec) -> CellDataModule:
    # Partial, then called: objects passed through instantiate itself would be turned into configs.
    datamodule = build(cfg.data, _partial_=True)(
        dataset=dataset,
        input_spec=input_spec(backbone),
        roi_crop=cfg.dataset.roi_crop,
        augmentations=build_augmentations(cfg),
        seed=cfg.seed,
    )
    if is_rank_zero():
        log.info("Input pipeline: %s", datamodule.describe())
    return datamodule


def build_model(cfg: DictConfig, datamodule: CellDataModule, backbone: BackboneSpec) -> LitClassifier:
    return build(
        cfg.model,
        backbone=backbone.as_dict(),
        class_names=datamodule.classes,
        class_weights=datamodule.loss_weights(),
        feature_smote=cfg.data.imbalance == "feature_smote",
        seed=cfg.seed,
        _convert_="all",
    )


class RunMetricsLogger(MLFlowLogger):
    """Lightning's MLflow logger, writing metrics into a run that the Tracker owns (allcls.tracking),
    through the Tracker: if the server goes away, they are kept with the rest (allcls.offline).

    The run's status, params and artifacts are the Tracker's business: Lightning would otherwise
    mark the run FINISHED as soon as `fit` returns, before the test predictions are logged, and
    log every constructor argument as a param.
    """

    def __init__(self, tracker: Tracker | None = None, **kwargs):
        super().__init__(**kwargs)
        self.tracker = tracker

    @rank_zero_only
    def log_metrics(self, metrics, step=None) -> None:
        if self.tracker is None:
            return super().log_metrics(metrics, step)
        self.tracker.log_metrics(self.run_id, {name: float(value) for name, value in metrics.items()}, step or 0)

    def log_hyperparams(self, params) -> None:
        pass  # a small curated set is logged by the training task

    def finalize(self, status: str = "success") -> None:
        pass  # the Tracker ends the run


def fit(cfg: DictConfig, model: LitClassifier, datamodule: CellDataModule, logger: RunMetricsLogger,
        checkpoint: Path | None = None) -> L.Trainer:
    """Fit, from `checkpoint` when resuming. A stop (SIGTERM, Ctrl-C) waits for the batch in
    progress, then saves last.ckpt (allcls.resume.CheckpointOnStop)."""
    callbacks = [*instantiate_dict(cfg.callbacks), CheckpointOnStop(cfg.paths.output_dir)]
    try:
        trainer: L.Trainer = build(cfg.trainer, callbacks=callbacks, logger=logger)
    except InstantiationException as error:
        if isinstance(error.__cause__, MisconfigurationException):
            raise AllclsError(f"The trainer config cannot run on this machine: {error.__cause__} "
                              "Pick one that can, e.g. trainer=cpu.") from None
        raise
    rerun_this_job_in_ddp_children()
    with stops_wait_for_the_batch():
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=checkpoint)
        except SIGTERMException:  # Lightning's handler stopped first: it would exit 0, a success to a scheduler
            raise Terminated() from None
    return trainer


# --- what the run keeps -----------------------------------------------------------------------

def log_dataset(tracker: Tracker, run_id: str, dataset: PreparedDataset, output_dir: Path) -> None:
    """The split manifest, each split as an MLflow dataset input, and the images left out as
    unreadable (if any)."""
    tracker.log_file(run_id, dataset.write_manifest(output_dir / "split_manifest.csv"), "data")
    counts = {split: {name: sum(1 for s in dataset.split_samples(split) if s.label == name) for name in dataset.classes}
              for split in ("train", "val", "test")}
    tracker.log_splits(run_id, dataset.name, str(dataset.root), dataset.split_hash, counts)
    if dataset.unreadable:
        tracker.log_text(run_id, "".join(f"{path}\t{problem}\n" for path, problem in dataset.unreadable),
                         "data/unreadable_images.txt")


def evaluate_best_checkpoint(tracker: Tracker, run_id: str, trainer: L.Trainer, model: LitClassifier,
                             datamodule: CellDataModule, output_dir: Path) -> float:
    """Reload the best checkpoint; write the val and test prediction tables from one single-device
    pass over each whole split; log test metrics (the same vectorised metrics as evaluation's) and
    confusion matrices; return the best score."""
    checkpoint = trainer.checkpoint_callback
    best_path = checkpoint.best_model_path if checkpoint else ""
    if best_path:
        state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict(state)
        tracker.log_file(run_id, best_path, "checkpoints")
    elif not trainer.fast_dev_run:  # (a fast dev run saves none)
        log.warning("No best checkpoint was saved (did validation run?): evaluating the final weights.")
    device = trainer.strategy.root_device
    dataset, classes = datamodule.prepared, datamodule.classes
    for split in EVALUATED_SPLITS:
        samples = dataset.split_samples(split)
        probabilities = predict_probabilities(model, datamodule.eval_dataloader(split), device,
                                              model_input=datamodule.model_input)
        labels = np.asarray(dataset.labels(samples), dtype=np.int64)
        table = make_table([s.sample_id for s in samples], [s.subject for s in samples], labels, probabilities, classes)
        tracker.log_file(run_id, write_table(table, output_dir / "predictions" / f"{split}.parquet"), "predictions")
        tracker.log_table(run_id, confusion_frame(probabilities, labels, classes), f"confusion_matrix/{split}.csv")
        if split == "test":
            scores = table_scores(probabilities, labels, classes, "test/")
            tracker.log_metrics(run_id, scores, step=trainer.global_step)
            headline = ", ".join(f"{k}={scores[f'test/{k}']:.3f}" for k in HEADLINE_METRICS)
            log.info("Best checkpoint on test: %s", headline)
    score = checkpoint.best_model_score if checkpoint else None
    return float(score) if score is not None else float("nan")
