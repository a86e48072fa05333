"""The audit trail: every answer the diagnosis page or a served model (`mlflow models serve`) gives is
recorded as an MLflow trace, in the experiment of the run the model was packaged from, where the
team already looks: the UI's Traces tab of that experiment, searchable by model and version, and
the registered version's own model page (each trace names its LoggedModel).

One trace per request, named `allcls.predict`:
- tags `allcls.model`, `allcls.version`, `allcls.aliases` (the aliases that named the version when it
  answered) and `allcls.surface` (`page` or `serve`);
- inputs: the SHA-256 of each image's bytes as they were sent (`sha256sum cell.bmp` finds a file's
  answers; no pixels are kept: the images stay with whoever sent them);
- outputs: each row's label, probabilities, set, refer, refer_reason, ood_score and error (on the
  page's patient mode, the patient's decision too, `level` = patient);
- its span's duration: the latency of the answer (attribute `reused_answers`: true where the page
  showed answers it had computed for an earlier request, e.g. another session's, the same files).

Recording never blocks or fails an answer: traces are written by a thread of their own (see
`_recording`), and anything that goes wrong there is logged as a warning and the record dropped.
`ALLCLS_AUDIT=off` (in the environment of the page or the server) records nothing. What version 3
of demo-ensemble answered in the last seven days:

    mlflow.search_traces(locations=[experiment_id], filter_string="tags.`allcls.model` = 'demo-ensemble' "
                         "AND tags.`allcls.version` = '3' AND timestamp_ms > <now - 7 days, in ms>")
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import Model as MLmodel

from allcls.tracking.tracker import Tracker

log = logging.getLogger(__name__)
SWITCH = "ALLCLS_AUDIT"
TRACE_NAME = "allcls.predict"
# (file names stay out: a clinic's may name the patient; each image is known by its hash)
RECORDED = ("level", "subject", "cells", "cells_used", "cells_referred", "label", "set", "refer", "refer_reason",
            "ood_score", "error")


@dataclass(frozen=True)
class Answerer:
    """Which model answered: registered name, version and its aliases then, LoggedModel, experiment."""

    name: str
    version: str
    aliases: str
    model_id: str | None
    experiment_id: str
    tracking_uri: str


def enabled() -> bool:
    return os.environ.get(SWITCH, "on").strip().lower() not in ("off", "0", "false", "no")


def registered_version(tracker: Tracker, name: str, version: str) -> Answerer | None:
    """The registered version `name`/`version` of this store (None, with a warning, if it cannot be
    looked up: the answers go on, unrecorded)."""
    if not enabled():
        return None
    try:
        found = tracker.client.get_model_version(name, version)
        aliases = ",".join(sorted(found.aliases or []))
        experiment = tracker.client.get_run(found.run_id).info.experiment_id if found.run_id else "0"
        return Answerer(name, str(version), aliases, getattr(found, "model_id", None), experiment,
                        tracker.tracking_uri)
    except MlflowException as error:
        log.warning("Not recording the answers of %s/%s (%s).", name, version, error.message)
        return None


def served_model(model_file: Path) -> Answerer | None:
    """The registered version behind a served model's folder (its MLmodel's model_id, looked up in the
    store $MLFLOW_TRACKING_URI names); None, with one line saying why, where there is none to record
    to. Never raises: a store that is down costs the audit trail, not the model."""
    if not enabled():
        return None
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        log.warning("Not recording answers: MLFLOW_TRACKING_URI is not set (serve models:/<name>@<alias> with it).")
        return None
    try:
        return _served(model_file, uri)
    except Exception as error:  # noqa: BLE001 - whatever the store says, the model is served
        log.warning("Not recording answers: %s cannot say which model this is (%s: %s).", uri, type(error).__name__,
                    error)
        return None


def _served(model_file: Path, uri: str) -> Answerer | None:
    model_id = MLmodel.load(str(model_file)).model_id
    if not model_id:
        log.warning("Not recording answers: %s names no LoggedModel (registered before allcls 0.4: register it "
                    "again).", model_file)
        return None
    tracker = Tracker(uri)
    logged = tracker.client.get_logged_model(model_id)
    name = logged.tags.get("registered_model")
    versions = tracker.client.search_model_versions(f"name='{name}'") if name else []
    for version in versions:  # (the registry keeps no model id on SQLite: a version is found by its files)
        if version.source and version.source.rstrip("/") == logged.artifact_location.rstrip("/"):
            return Answerer(str(name), str(version.version), "", model_id, logged.experiment_id, uri)
    return Answerer(logged.name, "", "", model_id, logged.experiment_id, uri)  # a run's own model, unregistered


def use_store(tracking_uri: str) -> None:
    """Record into `tracking_uri`: MLflow writes traces to its process-wide store, which the page sets
    here, on its own thread (a served model's is $MLFLOW_TRACKING_URI). Never from the recording
    thread: a background change of MLflow's global store would move whatever else the process is
    doing with MLflow at that moment."""
    if enabled() and mlflow.get_tracking_uri() != tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)


def record(answerer: Answerer | Callable[[], Answerer | None] | None, surface: str, digests: Sequence[str],
           rows: pd.DataFrame, started_ns: int, reused: bool = False) -> None:
    """Hand one request's trace (see the module's note) to the recording thread and return at once.
    `answerer`: who answered, or how to look it up (done on the recording thread, so that a slow
    store never holds up the answer); `started_ns`: time.time_ns() when the request came in;
    `reused`: the answers were computed for an earlier request (the page's shared cache)."""
    if answerer is None or not enabled():
        return
    try:
        ended = time.time_ns()
        columns = [c for c in rows.columns if c in RECORDED or c.startswith("prob_")]
        outputs = rows[columns].astype(object).where(rows[columns].notna(), None).to_dict("records")
        _start_recorder()
        _pending.put_nowait(functools.partial(_write, answerer, surface, list(digests), outputs, started_ns, ended,
                                              reused))
    except queue.Full:
        log.warning("The audit trail is %d answers behind (is the MLflow store down?): this one is not recorded.",
                    PENDING)
    except Exception as error:  # noqa: BLE001 - recording must never fail an answer
        log.warning("An answer was not recorded in the audit trail (%s: %s).", type(error).__name__, error)


def flush(timeout: float = 30) -> bool:
    """Wait until every answer handed over so far is written (or `timeout` seconds); True if they are."""
    deadline = time.monotonic() + timeout
    while _pending.unfinished_tasks and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _pending.unfinished_tasks


# One daemon thread writes the traces, MLflow's export synchronous inside it (its own asynchronous
# queue is switched off when the thread starts: a process that sets the tracking URI, or exits, would
# wait for that queue to drain, for minutes when the store is down). A store that is down holds up
# this thread only; the answers that arrive meanwhile wait in a bounded queue, and are dropped, with
# a warning, when it is full.
PENDING = 1000
_pending: queue.Queue = queue.Queue(maxsize=PENDING)
_recorder: list[threading.Thread] = []
_starting = threading.Lock()


def _start_recorder() -> None:
    with _starting:
        if not _recorder or not _recorder[-1].is_alive():
            _recorder.append(threading.Thread(target=_recording, name="allcls-audit", daemon=True))
            _recorder[-1].start()


def _recording() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")
    mlflow.tracing.reset()  # MLflow's exporter, made again with that setting
    while True:
        write = _pending.get()
        try:
            write()
        except Exception as error:  # noqa: BLE001 - recording must never stop answers: say so, go on
            log.warning("An answer was not recorded in the audit trail (%s: %s).", type(error).__name__, error)
        finally:
            _pending.task_done()


def _write(answerer: Answerer | Callable[[], Answerer | None], surface: str, digests: list[str],
           outputs: list[dict], started_ns: int, ended_ns: int, reused: bool) -> None:
    found = answerer() if callable(answerer) else answerer
    if found is None:
        return
    if mlflow.get_tracking_uri() != found.tracking_uri:  # see use_store
        log.warning("An answer of %s was not recorded: MLflow writes to %s, not to that model's store %s.",
                    found.name, mlflow.get_tracking_uri(), found.tracking_uri)
        return
    aliases = found.aliases
    if found.version and not aliases:  # a served version: the aliases that name it now
        version = MlflowClient(found.tracking_uri).get_model_version(found.name, found.version)
        aliases = ",".join(sorted(version.aliases or []))
    tags = {"allcls.model": found.name, "allcls.version": found.version, "allcls.aliases": aliases,
            "allcls.surface": surface}
    span = mlflow.start_span_no_context(
        TRACE_NAME, span_type="CHAIN", inputs={"sha256": digests}, tags=tags,
        attributes={"latency_ms": f"{(ended_ns - started_ns) / 1e6:.1f}", "images": str(len(digests)),
                    "reused_answers": str(reused).lower()},
        metadata={"mlflow.modelId": found.model_id} if found.model_id else None,
        experiment_id=found.experiment_id, start_time_ns=started_ns)
    span.end(outputs={"rows": outputs}, end_time_ns=ended_ns)


def answers(tracker: Tracker, experiment_id: str, filter_string: str | None = None, max_results: int = 100
            ) -> list:
    """The recorded answers (MLflow traces) of an experiment, newest first, e.g. with
    filter_string="tags.`allcls.version` = '3'"; waits for those this process is still writing."""
    flush()
    mlflow.set_tracking_uri(tracker.tracking_uri)
    return mlflow.search_traces(locations=[experiment_id], filter_string=filter_string, max_results=max_results,
                                order_by=["timestamp_ms DESC"], return_type="list")
