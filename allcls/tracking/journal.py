"""When the tracking server goes away in the middle of a training job, the job goes on.

What the run would have logged from then on (metrics, params, tags, files, its final status) is
kept in the job's folder, in order: `mlflow_offline.jsonl`, with copies of the files in
`mlflow_offline/`. `allcls-runs upload <job folder>` sends it to the server once it is
back, and then renames the journal to `mlflow_offline.uploaded.jsonl`, so that nothing is sent twice.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from mlflow.exceptions import MlflowException

from allcls.tracking.store import server_unreachable

log = logging.getLogger(__name__)

JOURNAL = "mlflow_offline.jsonl"
FILES = "mlflow_offline"
UPLOADED = "mlflow_offline.uploaded.jsonl"


class Journal:
    """The MLflow calls of one job that the server did not take, written as they happen."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.active = False  # set once the server stopped answering: from then on, everything goes here

    def add(self, call: str, run_id: str, *args: Any, **kwargs: Any) -> None:
        if call == "log_file":  # a copy: the job may change the file later (last.ckpt, logs)
            path, artifact_dir = Path(args[0]), args[1] if len(args) > 1 else kwargs.pop("artifact_dir", None)
            kept = self.folder / FILES / f"{self._entries():05d}" / path.name
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, kept)
            args = (str(kept.relative_to(self.folder)), artifact_dir)
        elif call == "log_text":  # kept as a file
            text, artifact_file = args
            kept = self.folder / FILES / f"{self._entries():05d}" / Path(artifact_file).name
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.write_text(text)
            parent = Path(artifact_file).parent.as_posix()
            call, args = "log_file", (str(kept.relative_to(self.folder)), None if parent == "." else parent)
        with open(self.folder / JOURNAL, "a") as journal:
            journal.write(json.dumps({"call": call, "run_id": run_id, "args": list(args), "kwargs": kwargs},
                                     default=str) + "\n")

    def _entries(self) -> int:
        path = self.folder / JOURNAL
        return sum(1 for _ in open(path)) if path.is_file() else 0


def kept_when_offline(method: Callable) -> Callable:
    """For a Run's logging methods: once the server stops answering, and the run keeps a journal (a
    training job's), the call goes to the journal instead of failing the job."""

    @functools.wraps(method)
    def call(run, *args, **kwargs):
        journal: Journal | None = run.journal
        if journal is not None and journal.active:
            journal.add(method.__name__, run.run_id, *args, **kwargs)
            return None
        try:
            return method(run, *args, **kwargs)
        except (MlflowException, requests.RequestException, OSError):
            if journal is None or server_unreachable(run.tracking_uri) is None:
                raise  # not a server that went away: a real error
            log.warning("The tracking server %s stopped answering: the job goes on, and what its run logs is kept "
                        "in %s. Once the server is back: allcls-runs upload %s", run.tracking_uri,
                        journal.folder / JOURNAL, journal.folder)
            journal.active = True
            journal.add(method.__name__, run.run_id, *args, **kwargs)
            return None

    return call


def replay(folder: Path, run_for: Callable[[str], Any]) -> dict[str, int]:
    """Send a job's journal, in order, through the runs `run_for(run_id)` gives; then rename it so
    that nothing is sent twice. Returns how many calls of each kind were sent."""
    journal = folder / JOURNAL
    sent: dict[str, int] = {}
    for line in journal.read_text().splitlines():
        entry = json.loads(line)
        call, args = entry["call"], entry["args"]
        if call == "log_file":
            args = [str(folder / args[0]), args[1]]
        getattr(run_for(entry["run_id"]), call)(*args, **entry.get("kwargs", {}))
        sent[call] = sent.get(call, 0) + 1
    journal.rename(folder / UPLOADED)
    return sent
