"""`allcls-runs upload` of a job's offline journal (allcls.tracking.journal) when the journal or the
job's record is damaged, or names a store that lacks its run: one line saying what to do, and
nothing sent twice. The journal here is the one a job writes (Journal.add), into a SQLite store."""

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from allcls.jobs.cli import main as runs_main
from allcls.jobs.resume import RUN_FILE
from allcls.tracking.journal import JOURNAL, UPLOADED, Journal


@pytest.fixture
def job(tmp_path):
    """A job folder whose run's server went away after it started: three epochs of metrics, a file
    and its final status are in the journal."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("x", artifact_location=str(tmp_path / "artifacts"))
                               ).info.run_id
    folder = tmp_path / "job"
    folder.mkdir()
    record = {"run_id": run_id, "tracking_uri": uri, "experiment_name": "x", "job": {"sweep_id": "job"}}
    (folder / RUN_FILE).write_text(json.dumps(record))
    journal = Journal(folder)
    for epoch in range(3):
        journal.add("log_metrics", run_id, {"val/loss": 1.0 - epoch / 10}, step=epoch)
    (tmp_path / "notes.txt").write_text("kept")
    journal.add("log_file", run_id, str(tmp_path / "notes.txt"), "logs")
    journal.add("terminate", run_id, "FINISHED")
    return {"folder": folder, "client": client, "run_id": run_id, "uri": uri}


def upload(folder: Path, capsys, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = runs_main(["upload", str(folder), *extra])
    except SystemExit as stopped:
        code = int(stopped.code or 0)
    out, err = capsys.readouterr()
    return code, out + err


def history(job) -> list[float]:
    return [m.value for m in job["client"].get_metric_history(job["run_id"], "val/loss")]


def test_a_damaged_line_anywhere_sends_nothing_and_says_which(job, capsys):
    journal = job["folder"] / JOURNAL
    whole = journal.read_text().splitlines()
    for damaged, said in ((whole[:1] + ['{"call": "log_metrics", "run_'] + whole[2:], "Line 2 of"),
                          (whole[:-1] + [whole[-1][:20]], "the last line: the job was stopped while writing it")):
        journal.write_text("\n".join(damaged) + "\n")
        code, printed = upload(job["folder"], capsys)
        assert code == 2 and said in printed and "nothing was sent" in printed, printed
        assert "Traceback" not in printed and history(job) == []
        assert job["client"].get_run(job["run_id"]).info.status == "RUNNING"  # as the job left it
    journal.write_text("\n".join(whole) + "\n")
    code, printed = upload(job["folder"], capsys)
    assert code == 0 and "The run is FINISHED" in printed and history(job) == [1.0, 0.9, 0.8]


def test_a_line_the_store_refuses_stops_there_and_a_retry_sends_only_the_rest(job, capsys):
    journal = job["folder"] / JOURNAL
    lines = journal.read_text().splitlines()
    edited = json.loads(lines[1])
    edited["args"] = [{"val/loss": "not a number"}]
    journal.write_text("\n".join([lines[0], json.dumps(edited), *lines[2:]]) + "\n")
    code, printed = upload(job["folder"], capsys)
    assert code == 2 and "Line 2 of" in printed and "the 1 line(s) before it are sent" in printed, printed
    assert history(job) == [1.0]
    journal.write_text("\n".join(lines) + "\n")  # repaired
    code, printed = upload(job["folder"], capsys)
    assert code == 0, printed
    assert history(job) == [1.0, 0.9, 0.8]  # the first epoch once
    assert (job["folder"] / UPLOADED).is_file() and not journal.exists()


def test_a_damaged_record_another_store_or_a_deleted_run_is_refused_by_name(job, capsys, tmp_path):
    other = f"sqlite:///{tmp_path}/other.db"
    MlflowClient(other).search_experiments()  # a store of its own, without the job's run
    code, printed = upload(job["folder"], capsys, "--tracking-uri", other)
    assert code == 2 and f"No MLflow run '{job['run_id']}' in {other}" in printed and history(job) == []

    job["client"].delete_run(job["run_id"])
    code, printed = upload(job["folder"], capsys)
    assert code == 2 and f"mlflow runs restore --run-id {job['run_id']}" in printed
    job["client"].restore_run(job["run_id"])

    record = job["folder"] / RUN_FILE
    record.write_text(record.read_text()[:30])
    code, printed = upload(job["folder"], capsys)
    assert code == 2 and f"{record} is damaged" in printed and "Traceback" not in printed
    assert history(job) == []


def test_tracking_uri_sends_the_journal_to_the_same_store_at_another_address(job, capsys):
    """The job logged to an address that no longer answers (the server moved): `--tracking-uri`
    names where the same store is now, and the whole journal goes there."""
    record = job["folder"] / RUN_FILE
    moved = json.loads(record.read_text())
    moved["tracking_uri"] = "http://127.0.0.1:9"  # nothing listens there
    record.write_text(json.dumps(moved))
    code, printed = upload(job["folder"], capsys)
    assert code == 2 and "Cannot reach the MLflow tracking server http://127.0.0.1:9" in printed
    code, printed = upload(job["folder"], capsys, "--tracking-uri", job["uri"])
    assert code == 0 and f"Sent to run {job['run_id']} on {job['uri']}" in printed, printed
    assert "The run is FINISHED" in printed and history(job) == [1.0, 0.9, 0.8]
    assert job["client"].get_run(job["run_id"]).info.status == "FINISHED"
