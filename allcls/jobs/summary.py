"""A Hydra callback that ends every launch with what was tracked and how to look at it."""

from __future__ import annotations

import logging

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from allcls.config.hydra_job import sweep_id as current_sweep_id
from allcls.jobs.ddp import is_rank_zero
from allcls.metrics.names import HEADLINE
from allcls.tracking.schema import SWEEP
from allcls.tracking.store import browse_command, ui_view
from allcls.tracking.tracker import Experiment, Tracker

log = logging.getLogger(__name__)

TEST_COLUMNS = tuple(f"test/{name}" for name in HEADLINE)


class RunSummary(Callback):
    """Prints the MLflow runs of this launch (a single run or a whole `-m` sweep) with their key
    metrics, then the command that opens the MLflow UI on the same store."""

    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        self._summarise(config)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        self._summarise(config)

    def _summarise(self, config: DictConfig) -> None:
        if not is_rank_zero():  # a DDP child process: its parent reports
            return
        try:
            # Hydra has already cleared its global config when these hooks run; `config` still has it.
            HydraConfig.instance().set_config(config)
            sweep_id = current_sweep_id()
            tracker = Tracker(config.logger.tracking_uri)
            experiment = tracker.experiment(config.experiment_name)
            runs = tracker.sweep_runs(experiment, sweep_id)
        except Exception as error:  # a summary must never hide the real outcome of the launch
            log.warning("No run summary: %s", error)
            return
        print(summary_text(tracker.tracking_uri, experiment, runs, sweep_id, f"{config.monitor}_best"), flush=True)


def summary_text(tracking_uri: str, experiment: Experiment, runs: list, sweep_id: str, best_column: str) -> str:
    """A table of the runs (best validation score, then test metrics) and how to browse them (the
    sweep's own run, if the launch has one)."""
    sweep_run = next((run for run in runs if run.data.tags.get("stage") == SWEEP), None)
    runs = [run for run in runs if run is not sweep_run]
    lines = [f"\n{len(runs)} MLflow run(s) in experiment {experiment.name!r}, sweep_id {sweep_id!r}:"]
    columns = (best_column, *TEST_COLUMNS)
    header = ["run", "status", *columns]
    rows = [[run.info.run_name or run.info.run_id[:8], run.info.status,
             *(f"{run.data.metrics[c]:.3f}" if c in run.data.metrics else "-" for c in columns)] for run in runs]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append("  " + "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))
    lines.append("Browse them: " + browse_command(tracking_uri, experiment.id))
    if sweep_run is not None:
        lines.append(f"The sweep's run, its jobs nested under it: "
                     f"{ui_view(tracking_uri, experiment.id, sweep_run.info.run_id)}")
    lines.append(f"Filter for this sweep in the UI search box: tags.sweep_id = \"{sweep_id}\"")
    return "\n".join(lines)
