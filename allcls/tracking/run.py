"""A run this process logs to. Its logging goes to the store, or, for a run opened with a journal (a
training job's), into the job's folder once the tracking server has stopped answering
(allcls.tracking.journal), so that the job goes on and loses nothing."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from allcls.tracking.journal import Journal, kept_when_offline

log = logging.getLogger(__name__)


class Run:
    """The run `run_id` of the store `tracking_uri`, logged to through `client`."""

    def __init__(self, client: MlflowClient, tracking_uri: str, run_id: str, journal: Journal | None = None):
        self.client, self.tracking_uri, self.run_id, self.journal = client, tracking_uri, run_id, journal

    def __repr__(self) -> str:
        return f"Run({self.run_id})"

    # Each of these goes to the journal, if the run has one, once the server has stopped answering;
    # their names are the journal's words for them.

    @kept_when_offline
    def terminate(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)

    @kept_when_offline
    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(key, str(value)[:6000]) for key, value in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    @kept_when_offline
    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        items = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        for start in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[start:start + 500])

    @kept_when_offline
    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    @kept_when_offline
    def log_file(self, path: str | Path, artifact_dir: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_dir)

    @kept_when_offline
    def log_splits(self, dataset_name: str, root: str, split_hash: str, counts: Mapping[str, Mapping[str, int]]
                   ) -> None:
        """Each split as an MLflow dataset input (named `<dataset>/<split>`, the split hash as its
        digest, the dataset's folder as its source, images per class as its profile), so the runs
        table's Dataset column says what every run was trained and tested on."""
        inputs = [DatasetInput(Dataset(name=f"{dataset_name}/{split}", digest=split_hash, source_type="local",
                                       source=str(root), profile=json.dumps({"images": sum(per_class.values()),
                                                                             "per_class": dict(per_class)})),
                               tags=[InputTag("mlflow.data.context", split)])
                  for split, per_class in counts.items()]
        # Jobs of one sweep log the same datasets at the same moment; a tracking server on PostgreSQL
        # then refuses all but the first (a unique key, where SQLite would have made them queue). The
        # dataset exists on the next try, and is linked to this run.
        for attempt in range(3):
            try:
                self.client.log_inputs(self.run_id, datasets=inputs)
                return
            except MlflowException as error:
                if attempt == 2 or "unique" not in str(error).lower():
                    raise
                time.sleep(0.5 * (attempt + 1))

    @kept_when_offline
    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    # Built on the ones above.

    def end(self, status: str, reason: str = "") -> None:
        """Mark the run ended with `status` (FINISHED, FAILED, KILLED); `reason` goes to its `error` tag."""
        if reason:
            self.set_tags({"error": reason[:4000]})
        self.terminate(status)

    def log_table(self, table: pd.DataFrame, artifact_file: str) -> None:
        """A DataFrame as a parquet (or .csv) artifact at `artifact_file`."""
        artifact = Path(artifact_file)
        with tempfile.TemporaryDirectory() as folder:
            local = Path(folder) / artifact.name
            if artifact.suffix == ".csv":
                table.to_csv(local)
            else:
                table.to_parquet(local, index=False)
            self.log_file(local, artifact.parent.as_posix() if artifact.parent.parts else None)

    def log_folder(self, folder: str | Path, artifact_path: str) -> None:
        """Every file of `folder`, under `artifact_path` (a packaged model's folder, say)."""
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)
