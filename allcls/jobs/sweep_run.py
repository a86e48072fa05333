"""Every `-m` launch (a grid or an Optuna search) is one MLflow run: the sweep's run, named after
the sweep, with the launch's command as its description. Its jobs' runs nest under it
(`mlflow.parentRunId`, found by the sweep id they share), and when the launch ends the sweep's run
carries the best job's score and id. `ensemble.py sweep_id=...` reads the jobs, as before: the
sweep's own run has stage `sweep`, not `train`.

Jobs whose experiment is not the launch's (a sweep over datasets) are not nested: MLflow shows
children only inside their parent's experiment.
"""

from __future__ import annotations

import atexit
import logging
import sys

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from allcls.config.hydra_job import JobInfo
from allcls.config.hydra_job import sweep_id as current_sweep_id
from allcls.jobs.ddp import is_rank_zero
from allcls.metrics.names import mode
from allcls.tracking.schema import SWEEP, provenance_tags
from allcls.tracking.tracker import Tracker, this_process

log = logging.getLogger(__name__)


class SweepRun(Callback):
    """The Hydra callback that opens the sweep's run when a `-m` launch starts and ends it."""

    def __init__(self) -> None:
        self.tracker: Tracker | None = None
        self.run_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if not is_rank_zero() or not config.get("experiment_name"):
            return  # a DDP child; or an ensemble launch that has not named its experiment
        HydraConfig.instance().set_config(config)
        sweep = current_sweep_id()
        self.tracker = Tracker(config.logger.tracking_uri, config.experiment_name,
                               config.logger.get("artifact_location"))
        command = " ".join([f"python {sys.argv[0].rsplit('/', 1)[-1]} -m", *config.hydra.overrides.task])
        name = sweep.removeprefix("multirun/")
        self.run_id = self.tracker.client.create_run(
            self.tracker.experiment_id(), run_name=name,
            tags={**provenance_tags(SWEEP, JobInfo(sweep_id=sweep)), "mlflow.note.content": command,
                  **this_process()}).info.run_id
        log.info("MLflow run %s of the sweep %s", self.run_id, sweep)
        atexit.register(self._end, "FAILED", "the launch ended before its last job (see the jobs' runs)")

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self.run_id is None:
            return
        monitor = f"{config.monitor}_best" if config.get("monitor") else None
        best = best_job(self.tracker, self.run_id, monitor)
        if best is not None:
            self.tracker.log_metrics(self.run_id, {monitor: best.data.metrics[monitor]})
            self.tracker.set_tags(self.run_id, {"best_run_id": best.info.run_id,
                                                "best_run_name": best.info.run_name or ""})
        self._end("FINISHED")

    def _end(self, status: str, reason: str = "") -> None:
        if self.run_id is None:
            return
        run_id, self.run_id = self.run_id, None
        if reason:
            self.tracker.set_tags(run_id, {"error": reason})
        self.tracker.client.set_terminated(run_id, status)


def best_job(tracker: Tracker, parent_id: str, metric: str | None):
    """The finished job of the sweep with the best `metric` (None if no job has it)."""
    if not metric:
        return None
    jobs = [run for run in tracker.client.search_runs(
        [tracker.experiment_id()], f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'FINISHED'")
        if metric in run.data.metrics]
    if not jobs:
        return None
    sign = 1 if mode(metric.removesuffix("_best")) == "max" else -1
    return max(jobs, key=lambda run: sign * run.data.metrics[metric])
