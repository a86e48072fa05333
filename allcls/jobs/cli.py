"""`allcls-runs`: housekeeping of the MLflow store (allcls.jobs.housekeeping).

    allcls-runs cleanup                 # list the runs left RUNNING by jobs that died
    allcls-runs cleanup --mark          # and mark FAILED those whose process is gone
    allcls-runs upload <job folder>     # send what a job kept while its server was away
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from allcls.config.entry import prepare_process
from allcls.config.stage import default_tracking_uri
from allcls.errors import reports_user_errors
from allcls.jobs.housekeeping import cleanup, upload_job
from allcls.tracking.store import require_existing
from allcls.tracking.tracker import Tracker


def parser() -> argparse.ArgumentParser:
    commands = argparse.ArgumentParser(prog="allcls-runs", description=__doc__.splitlines()[0])
    subcommands = commands.add_subparsers(dest="command", required=True)
    clean = subcommands.add_parser("cleanup", help="find runs left RUNNING by jobs that died; --mark marks them FAILED")
    clean.add_argument("--mark", action="store_true", help="mark FAILED the runs whose process is gone")
    clean.add_argument("--tracking-uri", default=None,
                       help="the store (default: $MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db)")
    send = subcommands.add_parser("upload", help="send what a job kept while its tracking server was away")
    send.add_argument("folder", type=Path, help="the training job's folder")
    send.add_argument("--tracking-uri", help="the server (default: the one the job used)")
    return commands


@reports_user_errors
def main(argv: list[str] | None = None) -> int:
    prepare_process()
    args = parser().parse_args(argv)
    if args.command == "upload":
        print(upload_job(args.folder, args.tracking_uri))
        return 0
    uri = args.tracking_uri or default_tracking_uri()
    require_existing(uri)
    runs = cleanup(Tracker(uri), args.mark)
    if not runs:
        print("No run is left RUNNING.")
        return 0
    gone = [run for run in runs if run.gone]
    print(f"{len(runs)} run(s) RUNNING in {uri}:")
    for run in runs:
        print("  " + run.describe() + ("  -> marked FAILED" if args.mark and run.gone else ""))
    if gone and not args.mark:
        print(f"{len(gone)} of them belong to a process that is gone: `allcls-runs cleanup --mark` marks them FAILED.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
