"""The training task: settings -> prepared data, model, trainer -> fit -> the best checkpoint
tested -> MLflow.

Everything later stages need is logged to the run: the resolved config and overrides, the split
manifest, curves, the best checkpoint, and the prediction tables of val and test.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from allcls.config.hydra_job import job_info, resolved_yaml
from allcls.config.stage import Job
from allcls.data.preparation import PreparedDataset
from allcls.jobs.ddp import distributed_job, is_rank_zero
from allcls.jobs.resume import refuse_changed_params, remember_the_run, resume_point, resuming
from allcls.jobs.signals import stop_signals_raise
from allcls.tracking import schema as run_schema
from allcls.tracking.journal import Journal
from allcls.tracking.run import Run
from allcls.tracking.store import is_local_store
from allcls.tracking.tracker import Tracker
from allcls.training import params as recorded
from allcls.training.best_checkpoint import evaluate_best_checkpoint
from allcls.training.build import (
    build_datamodule,
    build_model,
    check_config,
    check_monitor,
    prepare,
    refuse_a_used_output_dir,
)
from allcls.training.fit import RunMetricsLogger, fit

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> float:
    """Train one model as configured; return the best value of the monitored metric (for sweepers)."""
    with distributed_job():
        return _train(cfg)


def _train(cfg: DictConfig) -> float:
    tracker, point = None, None
    output_dir = Path(cfg.paths.output_dir)
    if resuming(cfg.get("resume"), output_dir):
        tracker = open_store(cfg)
        point = resume_point(cfg.get("resume"), output_dir, cfg.experiment_name, tracker, resolved_yaml(cfg),
                             job_info().overrides, main_process=is_rank_zero())
        resumed = OmegaConf.create(point.config_yaml)  # the job's own config, into its own folder
        assert isinstance(resumed, DictConfig)  # the config.yaml this job wrote: a mapping
        cfg = resumed
        output_dir = Path(cfg.paths.output_dir)
    backbone = check_config(cfg)
    if is_rank_zero() and point is None:
        refuse_a_used_output_dir(output_dir)
        tracker = open_store(cfg)  # a server that does not answer is refused before any data is read
    L.seed_everything(cfg.seed, workers=True)
    dataset = prepare(cfg)
    check_monitor(cfg, list(dataset.classes))
    datamodule = build_datamodule(cfg, dataset, backbone)
    model = build_model(cfg, datamodule, backbone)
    checkpoint = point.checkpoint if point else None

    if not is_rank_zero():
        # A DDP child process: its parent owns the MLflow run and all that is logged after fit.
        fit(cfg, model, datamodule, RunMetricsLogger(None), checkpoint)
        return float("nan")

    assert tracker is not None  # opened above, in the main process
    job = point.job if point else job_info(cfg.paths.output_dir)
    journal = Journal(output_dir)  # if the server goes away mid-run, the job goes on
    if not is_local_store(tracker.tracking_uri):  # and notices within seconds, not after MLflow's minutes of retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    config_yaml = resolved_yaml(cfg)
    params = recorded.params(cfg, dataset, datamodule.input_spec.size, job, datamodule.pipeline).as_params()
    if point is None:
        experiment = tracker.experiment(cfg.experiment_name, create=True)
        opened = tracker.stage_run(experiment, run_schema.TRAIN, recorded.run_name(cfg, job),
                                   recorded.tags(cfg, dataset), Job(output_dir, job, config_yaml), journal=journal)
    else:  # refused before the run is reopened: a refusal leaves it as it was (KILLED, FAILED)
        params = refuse_changed_params(point.run_id, tracker.get_run(point.run_id).data.params, params)
        opened = tracker.resumed_run(point.run_id, resumed_in=job_info().sweep_id, journal=journal)
    with opened as run, stop_signals_raise():
        try:
            run.log_params(params)
            if point is None:
                remember_the_run(output_dir, run.run_id, config_yaml, tracker.tracking_uri, cfg.experiment_name, job)
                log_dataset(run, dataset, output_dir)
            else:
                log.info("Resuming from %s", checkpoint)
            trainer = fit(cfg, model, datamodule, RunMetricsLogger(run), checkpoint)
            score = evaluate_best_checkpoint(run, trainer, model, datamodule, output_dir)
        finally:
            log_job_logs(run, output_dir, job.name, resumed=point is not None)
    if journal.active:
        log.warning("The run's end is not on the tracking server yet: once it is back, "
                    "allcls-runs upload %s", output_dir)
    return score


def open_store(cfg: DictConfig) -> Tracker:
    """The job's tracking store, probed once."""
    return Tracker(cfg.logger.tracking_uri, cfg.logger.artifact_location)


def log_job_logs(run: Run, output_dir: Path, name: str, resumed: bool) -> None:
    """The job's log file and profile (debug=profiler); a resumed job's log (in this launch's own
    folder) goes to logs/resumed/."""
    job_log = output_dir / f"{name}.log"
    if job_log.is_file():
        run.log_file(job_log, "logs")
    if (profile := output_dir / "fit-profile.txt").is_file():
        run.log_file(profile, "profile")
    if resumed and HydraConfig.initialized():
        launch_log = Path(HydraConfig.get().runtime.output_dir) / f"{name}.log"
        if launch_log.is_file():
            run.log_file(launch_log, f"logs/resumed/{launch_log.parent.name}")


def log_dataset(run: Run, dataset: PreparedDataset, output_dir: Path) -> None:
    """The split manifest, each split as an MLflow dataset input, and the images left out as
    unreadable (if any)."""
    run.log_file(dataset.write_manifest(output_dir / "split_manifest.csv"), "data")
    counts = {split: {name: sum(1 for s in dataset.split_samples(split) if s.label == name) for name in dataset.classes}
              for split in ("train", "val", "test")}
    run.log_splits(dataset.name, str(dataset.root), dataset.split_hash, counts)
    if dataset.unreadable:
        run.log_text("".join(f"{path}\t{problem}\n" for path, problem in dataset.unreadable),
                     "data/unreadable_images.txt")
