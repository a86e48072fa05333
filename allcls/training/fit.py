"""Fitting: the Trainer built from the config, metrics logged into the run the tracker owns, and
a stop (SIGTERM, Ctrl-C) that waits for the batch in progress and saves last.ckpt."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from hydra.errors import InstantiationException
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from allcls.config.sections import build, instantiate_dict
from allcls.data.datamodule import CellDataModule
from allcls.errors import AllclsError
from allcls.jobs.ddp import rerun_this_job_in_ddp_children
from allcls.jobs.resume import CheckpointOnStop
from allcls.jobs.signals import Terminated, stops_wait_for_the_batch
from allcls.models.lit_classifier import LitClassifier
from allcls.tracking.run import Run

log = logging.getLogger(__name__)


class RunMetricsLogger(Logger):
    """Lightning's logger, writing metrics into the training job's run (allcls.tracking.run): if the
    server goes away, they are kept with the rest in the job's journal. `run` is None in a DDP
    child process, whose parent logs.

    The run's status, params and artifacts are the training task's business: Lightning's MLflow
    logger would mark the run FINISHED as soon as `fit` returns, before the test predictions are
    logged, and log every constructor argument as a param.
    """

    def __init__(self, run: Run | None):
        super().__init__()
        self.run = run

    @property
    def name(self) -> str:
        return "mlflow"

    @property
    def version(self) -> str | None:
        return self.run.run_id if self.run is not None else None

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.run is not None:
            self.run.log_metrics({name: float(value) for name, value in metrics.items()}, step or 0)

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # a small curated set is logged by the training task


def fit(cfg: DictConfig, model: LitClassifier, datamodule: CellDataModule, logger: RunMetricsLogger,
        checkpoint: Path | None = None) -> L.Trainer:
    """Fit, from `checkpoint` when resuming. A stop (SIGTERM, Ctrl-C) waits for the batch in
    progress, then saves last.ckpt (allcls.jobs.resume.CheckpointOnStop)."""
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
