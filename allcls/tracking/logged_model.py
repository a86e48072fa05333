"""A packaged model as an MLflow 3 LoggedModel: what the UI's runs table lists under *Models* and
its logged-models view lists with their metrics and registered versions.

The run's `model/` folder is what `runs:/<run>/model` loads; the LoggedModel holds a copy of the
same files, which never changes: packaging the run again (overwrite=true) makes a new LoggedModel,
and a version registered from the old one keeps answering with it.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import LoggedModelOutput, Metric
from mlflow.models import Model as MLmodel

from allcls.tracking.registry import MODEL_PATH
from allcls.tracking.tracker import Tracker

LINKED_METRICS = ("test/",)  # the run's metrics shown as the model's: its scores on the test split


@dataclass(frozen=True)
class LoggedModel:
    model_id: str
    artifact_location: str  # where its files are: a registered version's source
    name: str


def logged_name(name: str, run_folders: set[str]) -> str:
    """The model's name as a LoggedModel may carry it, never one of the run's top-level folders:
    MLflow resolves runs:/<run>/<name> to the run's LoggedModel of that name before its folder."""
    safe = re.sub(r"[/:.%\"']", "-", name)
    return f"{safe}-model" if safe in run_folders else safe


def log_packaged_model(tracker: Tracker, run_id: str, folder: Path, name: str) -> LoggedModel:
    """The model folder the run packaged as a LoggedModel named `name`, READY, linked to the run as its
    output, with the run's test metrics as its own; `folder`'s MLmodel is made to name it (a served
    model finds its name, and the page its version, from there: allcls.tracking.audit)."""
    client = tracker.client
    run = tracker.get_run(run_id)
    folders = {item.path for item in client.list_artifacts(run_id)} | {MODEL_PATH}
    logged = client.create_logged_model(run.info.experiment_id, name=logged_name(name, folders), source_run_id=run_id,
                                        tags={"allcls.model": name}, model_type="allcls")
    described = MLmodel.load(str(folder))
    described.model_id = logged.model_id
    described.save(str(folder / "MLmodel"))
    with tempfile.TemporaryDirectory(prefix="allcls-logged-model-") as copy:
        shutil.copytree(folder, copy, dirs_exist_ok=True)
        client.log_model_artifacts(logged.model_id, copy)
    client.finalize_logged_model(logged.model_id, "READY")
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    # Logged again with their own timestamps and steps, the run's metrics are not repeated in its
    # history (MLflow skips a metric it already has) but become the model's too.
    linked = [Metric(key, point.value, point.timestamp, point.step, model_id=logged.model_id)
              for key in run.data.metrics if key.startswith(LINKED_METRICS)
              for point in [max(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))]]
    if linked:
        client.log_batch(run_id, metrics=linked)
    return LoggedModel(logged.model_id, logged.artifact_location, logged.name)
