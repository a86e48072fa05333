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

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from allcls.config.hydra_job import JobInfo, launch_command
from allcls.config.hydra_job import sweep_id as current_sweep_id
from allcls.jobs.ddp import is_rank_zero
from allcls.metrics.names import mode
from allcls.tracking.run import Run
from allcls.tracking.schema import SWEEP, provenance_tags
from allcls.tracking.tracker import Experiment, Tracker

log = logging.getLogger(__name__)


class SweepRun(Callback):
    """The Hydra callback that opens the sweep's run when a `-m` launch starts and ends it."""

    def __init__(self) -> None:
        self.opened: tuple[Tracker, Experiment, Run] | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        trials = config.get("optuna_trials", 1)
        if not isinstance(trials, int) or trials < 1:
            return  # no search: the sweeper refuses it next, before any job (allcls.jobs.optuna_study)
        if not is_rank_zero() or not config.get("experiment_name"):
            return  # a DDP child; or an ensemble launch that has not named its experiment
        HydraConfig.instance().set_config(config)
        sweep = current_sweep_id()
        tracker = Tracker(config.logger.tracking_uri, config.logger.get("artifact_location"))
        experiment = tracker.experiment(config.experiment_name, create=True)
        run = tracker.start_run(experiment, sweep.removeprefix("multirun/"),
                                provenance_tags(SWEEP, JobInfo(sweep_id=sweep)),
                                description=launch_command(config.hydra.overrides.task, multirun=True))
        self.opened = tracker, experiment, run
        log.info("MLflow run %s of the sweep %s", run.run_id, sweep)
        atexit.register(self._end, "FAILED", "the launch ended before its last job (see the jobs' runs)")

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self.opened is None:
            return
        tracker, experiment, run = self.opened
        if config.get("monitor"):
            monitor = f"{config.monitor}_best"
            best = best_job(tracker.finished_children(experiment, run.run_id), monitor)
            if best is not None:
                run.log_metrics({monitor: best.data.metrics[monitor]})
                run.set_tags({"best_run_id": best.info.run_id, "best_run_name": best.info.run_name or ""})
        self._end("FINISHED")

    def _end(self, status: str, reason: str = "") -> None:
        if self.opened is None:
            return
        _, _, run = self.opened
        self.opened = None
        run.end(status, reason)


def best_job(jobs: list, metric: str):
    """The job with the best `metric` (None if no job has it)."""
    scored = [run for run in jobs if metric in run.data.metrics]
    if not scored:
        return None
    sign = 1 if mode(metric.removesuffix("_best")) == "max" else -1
    return max(scored, key=lambda run: sign * run.data.metrics[metric])
