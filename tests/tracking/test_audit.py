"""The audit trail (allcls.tracking.audit): one MLflow trace per answer, searchable by model and
version; switched off, it records nothing; whatever goes wrong, it never fails an answer."""

import time

import pandas as pd

from allcls.tracking import audit
from allcls.tracking.tracker import Tracker

from helpers import free_port

ROWS = pd.DataFrame({"label": ["all", None], "set": ["all", None], "refer": [False, True],
                     "refer_reason": ["", "unreadable"], "ood_score": [0.1, float("nan")], "error": ["", "bad"],
                     "prob_all": [0.9, float("nan")]})


def answerer(uri: str, experiment_id: str, version: str = "3") -> audit.Answerer:
    return audit.Answerer("demo", version, "champion", None, experiment_id, uri)


def test_an_answer_is_recorded_with_its_model_version_inputs_outputs_and_latency(mlflow_client, monkeypatch):
    uri = mlflow_client.tracking_uri
    experiment = mlflow_client.create_experiment("answers")
    audit.use_store(uri)  # what the page does; a served model's is $MLFLOW_TRACKING_URI
    started = time.time_ns() - 25_000_000  # the request came in 25 ms ago
    audit.record(answerer(uri, experiment), "page", ["aa", "bb"], ROWS, started)
    audit.record(lambda: answerer(uri, experiment, "4"), "page", ["cc"], ROWS.iloc[:1], time.time_ns())  # looked up
    audit.record(lambda: None, "page", ["cc"], ROWS.iloc[:1], time.time_ns())  # a version that cannot be found
    monkeypatch.setenv(audit.SWITCH, "off")
    audit.record(answerer(uri, experiment), "page", ["dd"], ROWS, time.time_ns())  # not recorded
    monkeypatch.delenv(audit.SWITCH)
    traces = audit.answers(Tracker(uri), experiment, "tags.`allcls.version` = '3'")
    assert len(traces) == 1
    trace = traces[0]
    assert trace.info.tags["allcls.model"] == "demo" and trace.info.tags["allcls.surface"] == "page"
    span = trace.data.spans[0]
    assert span.inputs == {"sha256": ["aa", "bb"]}
    assert span.outputs["rows"][1] == {"label": None, "prob_all": None, "set": None, "refer": True,
                                       "refer_reason": "unreadable", "ood_score": None, "error": "bad"}
    assert span.outputs["rows"][0]["prob_all"] == 0.9
    assert float(span.attributes["latency_ms"]) >= 25 and span.attributes["reused_answers"] == "false"
    assert len(audit.answers(Tracker(uri), experiment)) == 2


def test_a_store_that_is_down_or_a_version_that_is_gone_never_fails_or_holds_up_an_answer(mlflow_client):
    down = f"http://127.0.0.1:{free_port()}"
    audit.use_store(down)
    start = time.perf_counter()
    audit.record(answerer(down, "1"), "serve", ["aa"], ROWS, time.time_ns())
    assert time.perf_counter() - start < 2
    assert audit.registered_version(Tracker(mlflow_client.tracking_uri), "no-such-model", "1") is None
