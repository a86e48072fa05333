"""Housekeeping of the MLflow store. `cleanup` finds runs left RUNNING by a job that died without
warning (SIGKILL, an out-of-memory kill, a lost machine) and, only when asked, marks them FAILED
with the reason; `upload` sends what a training job kept while its tracking server was away
(allcls.tracking.journal):

    allcls-runs cleanup                 # list them
    allcls-runs cleanup --mark          # and mark those whose process is gone
    allcls-runs upload <job folder>     # once the server is back

Every run records the host and process that opened it (tags `host`, `pid`). A run is marked only
when its process is proven gone: on this host and no longer alive. A run of another host, or of
a process that still lives, is listed and left alone.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from allcls.errors import AllclsError
from allcls.jobs.resume import RUN_FILE, alive, read_record
from allcls.tracking.journal import JOURNAL, UPLOADED, read_journal, replay
from allcls.tracking.run import Run
from allcls.tracking.store import ui_view
from allcls.tracking.tracker import Tracker


@dataclass(frozen=True)
class LeftRunning:
    run_id: str
    name: str
    experiment: str
    host: str
    pid: int | None
    gone: bool  # its process is proven gone (this host, not alive)

    def describe(self) -> str:
        where = f"process {self.pid} on {self.host}" if self.pid else "a process allcls did not record"
        state = "is gone" if self.gone else "cannot be checked from here" if self.host != socket.gethostname() \
            or not self.pid else "is still alive"
        return f"{self.run_id}  {self.name}  (experiment {self.experiment!r}): {where} {state}"


def left_running(tracker: Tracker) -> list[LeftRunning]:
    """Every RUNNING run of the store, with whether its process is proven gone."""
    here = socket.gethostname()
    found = []
    for run, experiment in tracker.running_runs():
        tags = run.data.tags
        pid = int(tags["pid"]) if tags.get("pid", "").isdigit() else None
        host = tags.get("host", "")
        found.append(LeftRunning(run.info.run_id, run.info.run_name or "", experiment, host, pid,
                                 gone=bool(pid and host == here and not alive(pid))))
    return found


def cleanup(tracker: Tracker, mark: bool) -> list[LeftRunning]:
    """List the runs left RUNNING; with `mark`, mark FAILED those whose process is gone."""
    runs = left_running(tracker)
    for run in runs:
        if mark and run.gone:
            tracker.run(run.run_id).end("FAILED", f"process {run.pid} on {run.host} ended without ending the run "
                                                  "(SIGKILL, out of memory or a lost machine); marked by allcls-runs "
                                                  "cleanup")
    return runs


def upload_job(folder: Path, tracking_uri: str | None) -> str:
    """Send what a training job kept while its tracking server was away; returns what was done."""
    record = folder / RUN_FILE
    if not record.is_file():
        raise AllclsError(f"{folder} is not a training job's folder (no {RUN_FILE}): give the folder the job wrote.")
    if not (folder / JOURNAL).is_file():
        done = " (it was uploaded already)" if (folder / UPLOADED).is_file() else ""
        raise AllclsError(f"{folder} holds nothing to upload: no {JOURNAL}{done}.")
    job = read_record(folder)
    entries = read_journal(folder)  # checked whole before the server is asked anything
    tracker = Tracker(tracking_uri or job["tracking_uri"])  # refuses a server that is down

    def existing(run_id: str) -> Run:
        tracker.get_run(run_id, f"upload to the store the job logged to ({job['tracking_uri']})")
        return tracker.run(run_id)

    sent = replay(folder, entries, existing)
    run = tracker.get_run(job["run_id"])
    what = ", ".join(f"{count} {call}" for call, count in sent.items())
    return (f"Sent to run {job['run_id']} on {tracker.tracking_uri}: {what}. The run is {run.info.status}: "
            f"{ui_view(tracker.tracking_uri, run.info.experiment_id, job['run_id'])}")
