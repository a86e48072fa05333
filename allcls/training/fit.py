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
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from allcls.config.sections import build, instantiate_dict
from allcls.data.datamodule import CellDataModule
from allcls.errors import AllclsError
from allcls.jobs.ddp import rerun_this_job_in_ddp_children
from allcls.jobs.resume import LAST
from allcls.jobs.signals import Terminated, pending_stop, stops_wait_for_the_batch
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


class CheckpointOnStop(Callback):
    """A job asked to stop (SIGTERM, Ctrl-C) finishes its batch, saves `last.ckpt` there and stops:
    `resume` then continues from that batch. The stop is held back by allcls.jobs.signals while fit
    runs. (Lightning warns on such a resume that the rest of that one epoch starts again from the
    loader's first batch: a loader's position is not part of a checkpoint.)"""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LAST

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        stop = pending_stop()
        if stop is not None:
            # Saving is a collective step under DDP, and only this process got the signal: there,
            # last.ckpt stays the last epoch's.
            if trainer.world_size == 1:
                trainer.save_checkpoint(self.path)
            stop()

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        # Lightning's own SIGTERM handler may stop first, at the end of the same batch (its check
        # comes after this callback's hook): the state is as consistent there, so save it.
        if isinstance(exception, SIGTERMException) and trainer.training and trainer.world_size == 1:
            trainer.save_checkpoint(self.path)

    def on_validation_batch_end(self, trainer: L.Trainer, *args) -> None:
        # Mid-validation is no state to resume from: last.ckpt stays the previous epoch's.
        if trainer.state.fn == "fit" and (stop := pending_stop()) is not None:
            stop()
