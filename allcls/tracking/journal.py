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

from allcls.errors import AllclsError
from allcls.tracking.store import server_unreachable

log = logging.getLogger(__name__)

JOURNAL = "mlflow_offline.jsonl"
FILES = "mlflow_offline"
UPLOADED = "mlflow_offline.uploaded.jsonl"
LOGGED_CALLS = frozenset({"terminate", "log_params", "log_metrics", "set_tags", "log_file", "log_splits"})  # Run's
SENT = "mlflow_offline.sent"  # how many of the journal's calls were sent, while an upload is under way


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


def read_journal(folder: Path) -> list[dict[str, Any]]:
    """Every call of a job's journal, checked whole before anything is sent: a damaged line (cut off
    when the job was killed while writing it, or edited) is named with what to do, and nothing is sent."""
    journal = folder / JOURNAL
    lines = journal.read_text(errors="replace").splitlines()
    entries = []
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
            well_formed = (isinstance(entry, dict) and isinstance(entry.get("call"), str)
                           and entry["call"] in LOGGED_CALLS and isinstance(entry.get("run_id"), str)
                           and isinstance(entry.get("args"), list) and isinstance(entry.get("kwargs", {}), dict)
                           and (entry["call"] != "log_file"
                                or bool(entry["args"]) and isinstance(entry["args"][0], str)))
        except json.JSONDecodeError:
            well_formed = False
        if not well_formed:
            last = " (the last line: the job was stopped while writing it; delete that line to send the rest)" \
                if number == len(lines) else ""
            raise AllclsError(f"Line {number} of {journal} is damaged{last}: nothing was sent. Repair or delete the "
                              "line, then upload again.")
        if entry["call"] == "log_file" and not (folder / entry["args"][0]).is_file():
            raise AllclsError(f"Line {number} of {journal} sends {folder / entry['args'][0]}, which is missing: "
                              "nothing was sent. Put the file back, or delete the line.")
        entries.append(entry)
    return entries


def replay(folder: Path, entries: list[dict[str, Any]], run_for: Callable[[str], Any]) -> dict[str, int]:
    """Send a job's journal (`entries`, as read_journal checked them), in order, through the runs
    `run_for(run_id)` gives; then rename it so that nothing is sent twice. How far it got is written
    after every call (SENT), so that sending again after an interruption sends only the rest. Returns
    how many calls of each kind were sent."""
    progress = folder / SENT
    recorded = progress.read_text().strip() if progress.is_file() else ""
    done = int(recorded) if recorded.isdigit() else 0
    runs = {run_id: run_for(run_id) for run_id in dict.fromkeys(e["run_id"] for e in entries)}  # each checked first
    sent: dict[str, int] = {}
    for number, entry in enumerate(entries[done:], done + 1):
        call, args = entry["call"], entry["args"]
        if call == "log_file":
            args = [str(folder / args[0]), args[1]]
        try:
            getattr(runs[entry["run_id"]], call)(*args, **entry.get("kwargs", {}))
        except (MlflowException, TypeError, ValueError) as error:  # TypeError, ValueError: arguments edited
            message = error.message if isinstance(error, MlflowException) else str(error)
            raise AllclsError(f"Line {number} of {folder / JOURNAL} was refused ({message.splitlines()[0]}); the "
                              f"{number - 1} line(s) before it are sent and will not be sent again. Repair or delete "
                              f"line {number}, then upload again.") from None
        sent[call] = sent.get(call, 0) + 1
        progress.write_text(str(number))
    (folder / JOURNAL).rename(folder / UPLOADED)
    progress.unlink(missing_ok=True)
    return sent
