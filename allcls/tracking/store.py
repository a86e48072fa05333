"""Tracking stores: opening one safely before any work (a server that does not answer is refused in
seconds, and a local SQLite store is opened for the first time by one process at a time), and how
a user browses one."""

from __future__ import annotations

import shlex
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from allcls.errors import AllclsError
from allcls.locks import exclusive


@contextmanager
def local_store_lock(uri: str) -> Iterator[None]:
    """One process at a time opens a local SQLite store for the first time. MLflow creates and
    migrates its tables then, and parallel jobs on a fresh store raced there ("duplicate column
    name"), losing runs and sometimes the store. The lock is a file beside the database."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    database = Path(uri.removeprefix("sqlite:///"))
    with exclusive(database.with_name(database.name + ".lock")):
        yield


def server_unreachable(uri: str) -> str | None:
    """Why a tracking server cannot be reached (None if it answers, or the store is a local one):
    asked directly, in seconds, because MLflow's client retries for minutes before it gives up."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5)
        return None
    except OSError as error:  # refused, timed out, unknown host, or an HTTP error status
        return str(getattr(error, "reason", error))


def sqlite_problem(uri: str) -> str | None:
    """Why the file a sqlite:/// URI names cannot be a database (None: it can, or it is not there yet)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri.removeprefix("sqlite:///"))
    if path.is_dir():
        return f"{path} is a folder"
    try:
        with open(path, "rb") as handle:
            header = handle.read(16)
    except FileNotFoundError:
        return None
    except OSError as error:
        return f"{path} cannot be read ({error.strerror})"
    return None if header in (b"", b"SQLite format 3\x00") else f"{path} is not an SQLite database"


def check_reachable(uri: str) -> None:
    """Refuse, in one line and before any work, a store that is not a database, or a tracking server
    that does not answer."""
    if (problem := sqlite_problem(uri)) is not None:
        raise AllclsError(f"{problem}, and the MLflow store is meant to be there ({uri}): point "
                          "logger.tracking_uri / $MLFLOW_TRACKING_URI at the store's mlflow.db, or move that file "
                          "away. Nothing was changed.")
    if (reason := server_unreachable(uri)) is not None:
        raise AllclsError(f"Cannot reach the MLflow tracking server {uri} ({reason}). Start it (mlflow server "
                          "--host 127.0.0.1 --port <port> ...), or point logger.tracking_uri / $MLFLOW_TRACKING_URI "
                          "at one that runs.")


def require_existing(uri: str) -> None:
    """Refuse a local store that does not exist yet: a command that only reads one (batch
    prediction, housekeeping) would otherwise create an empty one and then find nothing in it."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise AllclsError(f"No MLflow store at {uri}: run this from the folder that holds mlruns/, or set "
                          "MLFLOW_TRACKING_URI (or pass the store's address).")


def is_local_store(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("sqlite:", "file:", "/"))


def browse_command(tracking_uri: str, experiment_id: str | None = None, run_id: str | None = None) -> str:
    """The command that opens the MLflow UI on this store (or the server's address) and, given the
    experiment, the address of its runs view (or of the run)."""
    command = ""
    if is_local_store(tracking_uri):
        command = f"mlflow ui --backend-store-uri {shlex.quote(tracking_uri)}"
        if tracking_uri.startswith("sqlite:///"):
            artifacts = Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts"
            command += f" --default-artifact-root {shlex.quote(str(artifacts))}"
    if experiment_id is None:
        return command or ui_view(tracking_uri)
    view = ui_view(tracking_uri, experiment_id, run_id)
    return f"{command}, then open {view}" if command else view


def ui_view(tracking_uri: str, experiment_id: str | None = None, run_id: str | None = None) -> str:
    """The MLflow UI's address (`mlflow ui`'s default for a local store), of an experiment's runs
    view, or of one run. MLflow 3's UI opens experiments on a GenAI overview unless it is switched
    to model training (its "GenAI | Model training" switch, which this address sets)."""
    address = "http://127.0.0.1:5000" if is_local_store(tracking_uri) else tracking_uri.rstrip("/")
    if experiment_id is None:
        return address
    return f"{address}/#/experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "") + MODEL_TRAINING


MODEL_TRAINING = "?workflowType=machine_learning"
