"""Everything that talks to MLflow: opening a run for a stage, logging to it, downloading its
artifacts, finding runs. What the runs carry (stage names, tags, params) is in allcls.run_schema.

The tracking URI comes from the config (`logger.tracking_uri`), which defaults to
$MLFLOW_TRACKING_URI or else a SQLite store at <project>/mlruns/mlflow.db with artifacts beside it.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import pandas as pd
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from allcls.config.hydra_job import job_info, resolved_yaml
from allcls.errors import AllclsError
from allcls.jobs.signals import stop_reason, stop_signals_raise
from allcls.tracking.journal import Journal, kept_when_offline
from allcls.tracking.schema import SWEEP, TRAIN, provenance_tags
from allcls.tracking.store import check_reachable, is_local_store, local_store_lock

log = logging.getLogger(__name__)


class Tracker:
    """One MLflow experiment in one tracking store."""

    def __init__(self, tracking_uri: str, experiment_name: str, artifact_location: str | None = None):
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        # A local store keeps artifacts beside the database; a server decides where they go.
        self.artifact_location = artifact_location if is_local_store(tracking_uri) else None
        check_reachable(tracking_uri)
        with local_store_lock(tracking_uri):  # MLflow creates and migrates the store when a client opens it
            self.client = MlflowClient(tracking_uri)
        self.journal: Journal | None = None  # a training job's: where its run's logging goes if the server goes away

    def experiment_id(self) -> str:
        try:
            experiment = self.client.get_experiment_by_name(self.experiment_name)
        except MlflowException as error:
            raise AllclsError(f"Cannot reach the MLflow store {self.tracking_uri} ({error.message}). "
                              "Check logger.tracking_uri / $MLFLOW_TRACKING_URI.") from None
        if experiment is not None and experiment.lifecycle_stage == "deleted":
            raise AllclsError(
                f"MLflow experiment {self.experiment_name!r} is deleted: restore it in the MLflow UI "
                "(or `mlflow experiments restore`) or pick another experiment_name.")
        if experiment is not None:
            return experiment.experiment_id
        location = Path(self.artifact_location).resolve().as_uri() if self.artifact_location else None
        try:
            return self.client.create_experiment(self.experiment_name, artifact_location=location)
        except MlflowException:  # another job of the sweep created it first
            return self.client.get_experiment_by_name(self.experiment_name).experiment_id

    @contextmanager
    def stage_run(self, stage: str, run_name: str, tags: Mapping[str, str], cfg: DictConfig,
                  parent_run_id: str | None = None) -> Iterator[str]:
        """The run of one job of a stage (allcls.run_schema): `tags` plus its provenance (stage, sweep
        id, job number, git commit, version), the job's overrides as its description and as
        config/overrides.yaml, and the resolved config as config/config.yaml. `parent_run_id` nests
        it under another run in the MLflow UI. FINISHED when the block ends, FAILED when it raises."""
        job = job_info(cfg.paths.output_dir)
        all_tags = {**tags, **provenance_tags(stage, job)}
        parent_run_id = parent_run_id or (self.sweep_run_id(job.sweep_id) if job.job_num is not None else None)
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        with self.run(run_name, all_tags, " ".join(job.overrides)) as run_id:
            self.log_text(run_id, resolved_yaml(cfg), "config/config.yaml")
            self.log_text(run_id, OmegaConf.to_yaml(job.overrides), "config/overrides.yaml")
            yield run_id

    @contextmanager
    def run(self, run_name: str, tags: Mapping[str, str], description: str = "") -> Iterator[str]:
        """A new run, marked FINISHED when the block ends, FAILED (or KILLED) when it raises."""
        all_tags = {"mlflow.runName": run_name, **tags, **this_process()}
        if description:
            all_tags["mlflow.note.content"] = description
        run_id = self.client.create_run(self.experiment_id(), tags=all_tags, run_name=run_name).info.run_id
        log.info("MLflow run %s (%s) in experiment %r", run_id, run_name, self.experiment_name)
        with self._ended(run_id):
            yield run_id

    @contextmanager
    def resumed_run(self, run_id: str, resumed_in: str) -> Iterator[str]:
        """An unfinished run, continued by this process (`resumed_in`: this launch's sweep id)."""
        self.client.update_run(run_id, status="RUNNING")
        self.set_tags(run_id, {**this_process(), "resumed_in": resumed_in})
        if "error" in self.client.get_run(run_id).data.tags:
            self.client.delete_tag(run_id, "error")
        log.info("MLflow run %s resumed in experiment %r", run_id, self.experiment_name)
        with self._ended(run_id):
            yield run_id

    @contextmanager
    def _ended(self, run_id: str) -> Iterator[None]:
        try:
            with stop_signals_raise():
                yield
        except BaseException as error:
            # Stopped (SIGTERM, Ctrl-C, which Lightning turns into exit 1) is KILLED; anything else FAILED.
            stopped = isinstance(error, (KeyboardInterrupt, SystemExit))
            reason = stop_reason(error) if stopped else f"{type(error).__name__}: {error}"
            self.set_tags(run_id, {"error": reason[:4000]})
            self.terminate(run_id, "KILLED" if stopped else "FAILED")
            raise
        self.terminate(run_id, "FINISHED")

    def child_run(self, parent_id: str, name: str, tags: Mapping[str, str], params: Mapping[str, Any],
                  metrics: Mapping[str, float]) -> str:
        """A finished run nested under `parent_id` (the MLflow UI shows it inside the parent)."""
        run_id = self.client.create_run(self.experiment_id(), run_name=name,
                                        tags={"mlflow.parentRunId": parent_id, **tags}).info.run_id
        self.log_params(run_id, params)
        self.log_metrics(run_id, metrics)
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    # --- logging --------------------------------------------------------------------------

    # Each of these goes to the journal, if there is one, once the server has stopped answering.

    @kept_when_offline
    def terminate(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status)

    @kept_when_offline
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [Param(key, str(value)[:6000]) for key, value in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start:start + 100])

    @kept_when_offline
    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        items = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        for start in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[start:start + 500])

    @kept_when_offline
    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, str(value))

    @kept_when_offline
    def log_file(self, run_id: str, path: str | Path, artifact_dir: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_dir)

    @kept_when_offline
    def log_splits(self, run_id: str, dataset_name: str, root: str, split_hash: str,
                   counts: Mapping[str, Mapping[str, int]]) -> None:
        """Each split as an MLflow dataset input (named `<dataset>/<split>`, the split hash as its
        digest, the dataset's folder as its source, images per class as its profile), so the runs
        table's Dataset column says what every run was trained and tested on."""
        inputs = [DatasetInput(Dataset(name=f"{dataset_name}/{split}", digest=split_hash, source_type="local",
                                       source=str(root), profile=json.dumps({"images": sum(per_class.values()),
                                                                             "per_class": dict(per_class)})),
                               tags=[InputTag("mlflow.data.context", split)])
                  for split, per_class in counts.items()]
        self.client.log_inputs(run_id, datasets=inputs)

    @kept_when_offline
    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def log_table(self, run_id: str, table: pd.DataFrame, artifact_file: str) -> None:
        """A DataFrame as a parquet (or .csv) artifact at `artifact_file`."""
        artifact = Path(artifact_file)
        with tempfile.TemporaryDirectory() as folder:
            local = Path(folder) / artifact.name
            if artifact.suffix == ".csv":
                table.to_csv(local)
            else:
                table.to_parquet(local, index=False)
            self.log_file(run_id, local, artifact.parent.as_posix() if artifact.parent.parts else None)

    # --- lookup ---------------------------------------------------------------------------

    def find_runs(self, filter_string: str = "", run_ids: list[str] | None = None) -> list:
        """Finished training runs of the experiment that match an MLflow filter string, or the runs
        with these ids (from any experiment of the store)."""
        if run_ids:
            runs = []
            for run_id in run_ids:
                try:
                    runs.append(self.client.get_run(run_id))
                except MlflowException:
                    raise AllclsError(f"No MLflow run {run_id!r} in {self.tracking_uri}: check run_ids.") from None
            return runs
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            raise AllclsError(f"No MLflow experiment {self.experiment_name!r} in {self.tracking_uri} "
                              f"(there are {self.experiment_names()}): set experiment_name.")
        clauses = ["attributes.status = 'FINISHED'", f"tags.stage = '{TRAIN}'"]
        clauses += [filter_string] if filter_string else []
        try:
            return self.client.search_runs([experiment.experiment_id], " and ".join(clauses),
                                           order_by=["attributes.start_time ASC"], max_results=1000)
        except MlflowException as error:
            raise AllclsError(f"MLflow cannot read the filter {filter_string!r}: {error.message}") from None

    def get_run(self, run_id: str):
        try:
            return self.client.get_run(run_id)
        except MlflowException:
            raise AllclsError(f"No MLflow run {run_id!r} in {self.tracking_uri}.") from None

    def sweep_run_id(self, sweep_id: str) -> str | None:
        """The run of the `-m` launch `sweep_id` (allcls.sweep_run), if it has one in this experiment."""
        runs = self.client.search_runs([self.experiment_id()], f"tags.stage = '{SWEEP}' and tags.sweep_id = "
                                       f"'{sweep_id}'", max_results=1)
        return runs[0].info.run_id if runs else None

    def unfinished_training_runs(self) -> list:
        """Training runs of the experiment that did not finish (RUNNING, KILLED, FAILED), newest first."""
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            return []
        return self.client.search_runs([experiment.experiment_id],
                                       f"attributes.status != 'FINISHED' and tags.stage = '{TRAIN}'",
                                       order_by=["attributes.start_time DESC"], max_results=100)

    def latest_run_id(self, stage: str) -> str:
        """The newest finished run of `stage` in the experiment."""
        experiment = self.client.get_experiment_by_name(self.experiment_name) if self.experiment_name else None
        if experiment is None:
            raise AllclsError(f"No MLflow experiment {self.experiment_name!r} in {self.tracking_uri} (there are "
                              f"{self.experiment_names()}): set experiment_name.")
        runs = self.client.search_runs([experiment.experiment_id],
                                       f"attributes.status = 'FINISHED' and tags.stage = '{stage}'",
                                       order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            raise AllclsError(f"No finished {stage} run in experiment {self.experiment_name!r}.")
        return runs[0].info.run_id

    def experiment_names(self) -> list[str]:
        return [e.name for e in self.client.search_experiments()]

    def latest_sweep_id(self) -> str:
        """The sweep id of the most recent finished training run of the experiment (runs logged by
        hand, without one, are passed over)."""
        sweeps = [run.data.tags["sweep_id"] for run in self.find_runs() if run.data.tags.get("sweep_id")]
        if not sweeps:
            raise AllclsError(f"No finished training runs in experiment {self.experiment_name!r}: nothing to ensemble.")
        return sweeps[-1]

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

    def sweep_runs(self, sweep_id: str) -> list:
        """The runs of a launch: those it started, and those it resumed."""
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            return []
        runs = [run for tag in ("sweep_id", "resumed_in")
                for run in self.client.search_runs([experiment.experiment_id], f"tags.{tag} = '{sweep_id}'",
                                                   order_by=["attributes.start_time ASC"])]
        return list({run.info.run_id: run for run in runs}.values())


def this_process() -> dict[str, str]:
    """host and pid: `allcls-runs cleanup` and `resume` can then tell a run whose process died."""
    return {"host": socket.gethostname(), "pid": str(os.getpid())}


class MissingArtifact(AllclsError):
    """A run has no artifact at the path asked for."""
