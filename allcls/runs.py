"""Housekeeping of the MLflow store. `cleanup` finds runs left RUNNING by a job that died without
warning (SIGKILL, an out-of-memory kill, a lost machine) and, only when asked, marks them FAILED
with the reason; `upload` sends what a training job kept while its tracking server was away
(allcls.offline):

    python -m allcls.runs cleanup                 # list them
    python -m allcls.runs cleanup --mark          # and mark those whose process is gone
    python -m allcls.runs upload <job folder>     # once the server is back

Every run records the host and process that opened it (tags `host`, `pid`). A run is marked only
when its process is proven gone: on this host and no longer alive. A run of another host, or of
a process that still lives, is listed and left alone.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from allcls.errors import AllclsError, user_message
from allcls.offline import JOURNAL, UPLOADED, upload
from allcls.resume import RUN_FILE, alive
from allcls.stores import ui_view
from allcls.tracking import Tracker


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
    client, here = tracker.client, socket.gethostname()
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    found = []
    for run in client.search_runs(list(experiments), "attributes.status = 'RUNNING'", max_results=50_000):
        tags = run.data.tags
        pid = int(tags["pid"]) if tags.get("pid", "").isdigit() else None
        host = tags.get("host", "")
        found.append(LeftRunning(run.info.run_id, run.info.run_name or "", experiments[run.info.experiment_id],
                                 host, pid, gone=bool(pid) and host == here and not alive(pid)))
    return found


def cleanup(tracker: Tracker, mark: bool) -> list[LeftRunning]:
    """List the runs left RUNNING; with `mark`, mark FAILED those whose process is gone."""
    runs = left_running(tracker)
    for run in runs:
        if mark and run.gone:
            tracker.client.set_tag(run.run_id, "error", f"process {run.pid} on {run.host} ended without ending "
                                                        "the run (SIGKILL, out of memory or a lost machine); "
                                                        "marked by allcls.runs cleanup")
            tracker.client.set_terminated(run.run_id, "FAILED")
    return runs


def upload_job(folder: Path, tracking_uri: str | None) -> str:
    """Send what a training job kept while its tracking server was away; returns what was done."""
    record = folder / RUN_FILE
    if not record.is_file():
        raise AllclsError(f"{folder} is not a training job's folder (no {RUN_FILE}): give the folder the job wrote.")
    if not (folder / JOURNAL).is_file():
        done = " (it was uploaded already)" if (folder / UPLOADED).is_file() else ""
        raise AllclsError(f"{folder} holds nothing to upload: no {JOURNAL}{done}.")
    run = json.loads(record.read_text())
    tracker = Tracker(tracking_uri or run["tracking_uri"], run["experiment_name"])  # refuses a server that is down
    sent = upload(folder, tracker)
    status = tracker.client.get_run(run["run_id"]).info.status
    what = ", ".join(f"{count} {call}" for call, count in sent.items())
    return (f"Sent to run {run['run_id']} on {tracker.tracking_uri}: {what}. The run is {status}: "
            f"{ui_view(tracker.tracking_uri, tracker.experiment_id(), run['run_id'])}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m allcls.runs", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    clean = commands.add_parser("cleanup", help="find runs left RUNNING by jobs that died; --mark marks them FAILED")
    clean.add_argument("--mark", action="store_true", help="mark FAILED the runs whose process is gone")
    clean.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI")
                       or f"sqlite:///{Path.cwd() / 'mlruns' / 'mlflow.db'}",
                       help="the store (default: $MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db)")
    send = commands.add_parser("upload", help="send what a job kept while its tracking server was away")
    send.add_argument("folder", type=Path, help="the training job's folder")
    send.add_argument("--tracking-uri", help="the server (default: the one the job used)")
    args = parser.parse_args(argv)
    try:
        if args.command == "upload":
            print(upload_job(args.folder, args.tracking_uri))
            return 0
        if args.tracking_uri.startswith("sqlite:///") and not Path(args.tracking_uri[10:]).is_file():
            raise AllclsError(f"No MLflow store at {args.tracking_uri}: run this from the folder that holds mlruns/, "
                              "or pass --tracking-uri.")
        runs = cleanup(Tracker(args.tracking_uri, ""), args.mark)
    except AllclsError as error:
        print(f"error: {user_message(error)}", file=sys.stderr)
        return 2
    if not runs:
        print("No run is left RUNNING.")
        return 0
    gone = [run for run in runs if run.gone]
    print(f"{len(runs)} run(s) RUNNING in {args.tracking_uri}:")
    for run in runs:
        print("  " + run.describe() + ("  -> marked FAILED" if args.mark and run.gone else ""))
    if gone and not args.mark:
        print(f"{len(gone)} of them belong to a process that is gone: `python -m allcls.runs cleanup --mark` marks "
              "them FAILED.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
