"""One MLflow store, asked in the project's words: open a stage's run, find runs, download what they
logged. What the runs carry (stage names, tags, params) is in allcls.tracking.schema; a run this
process logs to is an allcls.tracking.run.Run.

The store is probed once, when the Tracker is made: a server that does not answer is refused in one
line, in seconds, and a local SQLite store is opened for the first time by one process at a time.
"""

from __future__ import annotations

import logging
import os
import posixpath
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from allcls.config.stage import Job
from allcls.errors import AllclsError
from allcls.predictions import validate_table
from allcls.tracking.journal import Journal
from allcls.tracking.run import Run
from allcls.tracking.schema import SWEEP, TRAIN, provenance_tags
from allcls.tracking.store import check_reachable, is_local_store, local_store_lock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Experiment:
    id: str
    name: str


class MissingArtifact(AllclsError):
    """A run has no artifact at the path asked for."""


def this_process() -> dict[str, str]:
    """host and pid: `allcls-runs cleanup` and `resume` can then tell a run whose process died."""
    return {"host": socket.gethostname(), "pid": str(os.getpid())}


def ended_by(error: BaseException) -> tuple[str, str]:
    """(status, reason) of a run whose block raised `error`: a stop (SIGTERM, Ctrl-C, a scheduler's
    signal; allcls.jobs.signals gives it its `stop_reason`) is KILLED, anything else FAILED."""
    if isinstance(error, (KeyboardInterrupt, SystemExit)):
        reason = getattr(error, "stop_reason", None) or (
            "interrupted (SIGINT / Ctrl-C)" if isinstance(error, KeyboardInterrupt) else f"stopped (exit {error})")
        return "KILLED", reason
    return "FAILED", f"{type(error).__name__}: {error}"


class Tracker:
    """One MLflow store. `artifact_location`: where a new experiment of a local store keeps its
    artifacts (a server decides that itself)."""

    def __init__(self, tracking_uri: str, artifact_location: str | None = None):
        self.tracking_uri = tracking_uri
        self.artifact_location = artifact_location if is_local_store(tracking_uri) else None
        check_reachable(tracking_uri)
        with local_store_lock(tracking_uri):  # MLflow creates and migrates the store when a client opens it
            self.client = MlflowClient(tracking_uri)

    # --- experiments ----------------------------------------------------------------------------

    def experiment(self, name: str, create: bool = False) -> Experiment:
        """The experiment `name`, created when `create` and missing; refused by name when it is
        deleted, or missing and not to be created."""
        try:
            found = self.client.get_experiment_by_name(name) if name else None
        except MlflowException as error:
            raise AllclsError(f"Cannot reach the MLflow store {self.tracking_uri} ({error.message}). "
                              "Check logger.tracking_uri / $MLFLOW_TRACKING_URI.") from None
        if found is not None and found.lifecycle_stage == "deleted":
            raise AllclsError(f"MLflow experiment {name!r} is deleted: restore it in the MLflow UI "
                              "(or `mlflow experiments restore`) or pick another experiment_name.")
        if found is not None:
            return Experiment(found.experiment_id, name)
        if not create:
            raise AllclsError(f"No MLflow experiment {name!r} in {self.tracking_uri} (there are "
                              f"{self.experiment_names()}): set experiment_name.")
        location = Path(self.artifact_location).resolve().as_uri() if self.artifact_location else None
        try:
            return Experiment(self.client.create_experiment(name, artifact_location=location), name)
        except MlflowException:  # another job of the sweep created it first
            return self.experiment(name)

    def experiment_of(self, run) -> Experiment:
        """The experiment a run (as `get_run` gives it) belongs to."""
        return Experiment(run.info.experiment_id, self.client.get_experiment(run.info.experiment_id).name)

    def experiment_names(self) -> list[str]:
        return [e.name for e in self.client.search_experiments()]

    # --- opening runs -----------------------------------------------------------------------------

    def start_run(self, experiment: Experiment, name: str, tags: Mapping[str, str], description: str = "",
                  journal: Journal | None = None) -> Run:
        """A new RUNNING run, with the host and process that opened it; the caller ends it."""
        all_tags = {"mlflow.runName": name, **tags, **this_process()}
        if description:
            all_tags["mlflow.note.content"] = description
        run_id = self.client.create_run(experiment.id, tags=all_tags, run_name=name).info.run_id
        log.info("MLflow run %s (%s) in experiment %r", run_id, name, experiment.name)
        return Run(self.client, self.tracking_uri, run_id, journal)

    @contextmanager
    def open_run(self, experiment: Experiment, name: str, tags: Mapping[str, str], description: str = "",
                 journal: Journal | None = None) -> Iterator[Run]:
        """A new run, FINISHED when the block ends, KILLED or FAILED (with the reason) when it raises."""
        run = self.start_run(experiment, name, tags, description, journal)
        with ended_with_the_block(run):
            yield run

    @contextmanager
    def stage_run(self, experiment: Experiment, stage: str, name: str, tags: Mapping[str, str], job: Job,
                  parent_run_id: str | None = None, journal: Journal | None = None) -> Iterator[Run]:
        """The run of one job of a stage (allcls.tracking.schema): `tags` plus its provenance (stage,
        sweep id, job number, git commit, version), the job's overrides as its description and as
        config/overrides.yaml, and its resolved config as config/config.yaml. `parent_run_id` nests
        it under another run in the MLflow UI (a job of a `-m` launch nests under the launch's run)."""
        info = job.info
        all_tags = {**tags, **provenance_tags(stage, info)}
        parent_run_id = parent_run_id or (self.sweep_run_id(experiment, info.sweep_id) if info.job_num is not None
                                          else None)
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        with self.open_run(experiment, name, all_tags, " ".join(info.overrides), journal) as run:
            run.log_text(job.config_yaml, "config/config.yaml")
            run.log_text(OmegaConf.to_yaml(list(info.overrides)), "config/overrides.yaml")
            yield run

    @contextmanager
    def resumed_run(self, run_id: str, resumed_in: str, journal: Journal | None = None) -> Iterator[Run]:
        """An unfinished run, continued by this process (`resumed_in`: this launch's sweep id)."""
        self.client.update_run(run_id, status="RUNNING")
        run = Run(self.client, self.tracking_uri, run_id, journal)
        run.set_tags({**this_process(), "resumed_in": resumed_in})
        if "error" in self.client.get_run(run_id).data.tags:
            self.client.delete_tag(run_id, "error")
        log.info("MLflow run %s resumed", run_id)
        with ended_with_the_block(run):
            yield run

    def run(self, run_id: str) -> Run:
        """An existing run of the store, to log to or end."""
        return Run(self.client, self.tracking_uri, run_id)

    def child_run(self, parent: Run, experiment: Experiment, name: str, tags: Mapping[str, str],
                  params: Mapping[str, Any], metrics: Mapping[str, float]) -> str:
        """A finished run nested under `parent` (the MLflow UI shows it inside the parent)."""
        run_id = self.client.create_run(experiment.id, run_name=name,
                                        tags={"mlflow.parentRunId": parent.run_id, **tags}).info.run_id
        child = self.run(run_id)
        child.log_params(params)
        child.log_metrics(metrics)
        child.terminate("FINISHED")
        return run_id

    # --- finding runs -----------------------------------------------------------------------------

    def get_run(self, run_id: str, hint: str = ""):
        """The run `run_id`; one that the store does not have is refused by name (`hint`: the fix)."""
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            raise AllclsError(f"No MLflow run {run_id!r} in {self.tracking_uri}" + (f": {hint}." if hint else ".")
                              ) from None
        if run.info.lifecycle_stage == "deleted":
            raise AllclsError(f"Run {run_id} is deleted in {self.tracking_uri}: restore it first (`mlflow runs restore "
                              f"--run-id {run_id}`, MLFLOW_TRACKING_URI={self.tracking_uri} set)"
                              + (f", or {hint}." if hint else "."))
        return run

    def search(self, experiments: list[Experiment], filter_string: str, newest_first: bool = False,
               max_results: int = 1000) -> list:
        """Runs of the experiments that match an MLflow filter string, oldest (or newest) first."""
        order = "DESC" if newest_first else "ASC"
        try:
            return self.client.search_runs([e.id for e in experiments], filter_string,
                                           order_by=[f"attributes.start_time {order}"], max_results=max_results)
        except MlflowException as error:
            raise AllclsError(f"MLflow cannot read the filter {filter_string!r}: {error.message}") from None

    def finished_training_runs(self, experiment: Experiment, filter_string: str = "") -> list:
        """The experiment's finished training runs that also match `filter_string`, oldest first."""
        clauses = ["attributes.status = 'FINISHED'", f"tags.stage = '{TRAIN}'", *([filter_string] if filter_string
                                                                                  else [])]
        return self.search([experiment], " and ".join(clauses))

    def latest_run_id(self, experiment: Experiment, stage: str) -> str:
        """The newest finished run of `stage` in the experiment."""
        runs = self.search([experiment], f"attributes.status = 'FINISHED' and tags.stage = '{stage}'",
                           newest_first=True, max_results=1)
        if not runs:
            raise AllclsError(f"No finished {stage} run in experiment {experiment.name!r}.")
        return runs[0].info.run_id

    def latest_sweep_id(self, experiment: Experiment) -> str:
        """The sweep id of the most recent finished training run of the experiment (runs logged by
        hand, without one, are passed over)."""
        sweeps = [run.data.tags["sweep_id"] for run in self.finished_training_runs(experiment)
                  if run.data.tags.get("sweep_id")]
        if not sweeps:
            raise AllclsError(f"No finished training runs in experiment {experiment.name!r}: nothing to ensemble.")
        return sweeps[-1]

    def sweep_run_id(self, experiment: Experiment, sweep_id: str) -> str | None:
        """The run of the `-m` launch `sweep_id` (allcls.jobs.sweep_run), if it has one in this experiment."""
        runs = self.search([experiment], f"tags.stage = '{SWEEP}' and tags.sweep_id = '{sweep_id}'", max_results=1)
        return runs[0].info.run_id if runs else None

    def sweep_runs(self, experiment: Experiment, sweep_id: str) -> list:
        """The runs of a launch: those it started, and those it resumed."""
        runs = [run for tag in ("sweep_id", "resumed_in")
                for run in self.search([experiment], f"tags.{tag} = '{sweep_id}'")]
        return list({run.info.run_id: run for run in runs}.values())

    def unfinished_training_runs(self, experiment: Experiment) -> list:
        """Training runs of the experiment that did not finish (RUNNING, KILLED, FAILED), newest first."""
        return self.search([experiment], f"attributes.status != 'FINISHED' and tags.stage = '{TRAIN}'",
                           newest_first=True, max_results=100)

    def finished_children(self, experiment: Experiment, parent_id: str) -> list:
        """The finished runs nested under `parent_id`."""
        return self.search([experiment], f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'FINISHED'")

    def running_runs(self) -> list[tuple[Any, str]]:
        """Every RUNNING run of the store, with the name of its experiment."""
        experiments = {e.experiment_id: e.name for e in self.client.search_experiments()}
        runs = self.client.search_runs(list(experiments), "attributes.status = 'RUNNING'", max_results=50_000)
        return [(run, experiments[run.info.experiment_id]) for run in runs]

    # --- artifacts --------------------------------------------------------------------------------

    def has_artifact(self, run_id: str, artifact_path: str) -> bool:
        path = artifact_path.rstrip("/")
        return any(item.path == path for item in self.client.list_artifacts(run_id, posixpath.dirname(path) or None))

    def download(self, run_id: str, artifact_path: str, destination: str | Path) -> Path:
        """Download one artifact (a file or a folder) into `destination`. A run without it raises
        MissingArtifact, an AllclsError naming both; `download_if_present` returns None instead.
        Any other failure (a store that is down) is not a missing artifact and raises as itself."""
        if not self.has_artifact(run_id, artifact_path):
            raise MissingArtifact(f"Run {run_id} has no artifact {artifact_path}.")
        return Path(self.client.download_artifacts(run_id, artifact_path, str(destination)))

    def download_if_present(self, run_id: str, artifact_path: str, destination: str | Path) -> Path | None:
        if not self.has_artifact(run_id, artifact_path):
            return None
        return Path(self.client.download_artifacts(run_id, artifact_path, str(destination)))

    def prediction_table(self, run_id: str, split: str, destination: str | Path, classes: list[str] | None = None,
                         where: str = "") -> pd.DataFrame | None:
        """The prediction table (allcls.predictions) the run logged for `split`, checked; None when
        it logged none."""
        local = self.download_if_present(run_id, f"predictions/{split}.parquet", destination)
        if local is None:
            return None
        return validate_table(pd.read_parquet(local), classes,
                              where=where or f"predictions/{split}.parquet of run {run_id}")


@contextmanager
def ended_with_the_block(run: Run) -> Iterator[None]:
    """`run` FINISHED when the block ends, KILLED or FAILED with the reason when it raises."""
    try:
        yield
    except BaseException as error:
        run.end(*ended_by(error))
        raise
    run.terminate("FINISHED")
