"""MLflow tracking: local SQLite store, a real `mlflow server` on 127.0.0.1, and the run summary."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from allcls.config.stage import Job
from allcls.ensemble.cli import main as ensemble_main
from allcls.errors import AllclsError
from allcls.evaluation.cli import main as evaluate_main
from allcls.jobs.cli import main as runs_main
from allcls.jobs.summary import summary_text
from allcls.predictions import read_table
from allcls.serving.cli import package as package_main
from allcls.serving.cli import predict as predict_main
from allcls.tracking import schema as run_schema
from allcls.tracking.registry import ModelUnavailable
from allcls.tracking.registry import load as load_model
from allcls.tracking.tracker import MissingArtifact, Tracker
from allcls.training.cli import main as train_main
from allcls.training.task import train

from helpers import FAST, PROJECT, SMALL_SYNTHETIC, artifacts, free_port, run_entry, served


def test_new_experiments_keep_artifacts_beside_the_local_database(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlruns/mlflow.db", str(tmp_path / "mlruns" / "artifacts"))
    created = tracker.experiment("exp", create=True)
    experiment = MlflowClient(tracker.tracking_uri).get_experiment(created.id)
    assert experiment.artifact_location == (tmp_path / "mlruns" / "artifacts").as_uri()
    assert tracker.experiment("exp", create=True) == tracker.experiment("exp") == created  # found again, not twice
    with pytest.raises(AllclsError, match=r"No MLflow experiment 'other' in .* \(there are \['exp', "
                                          r"'Default'\]\): set experiment_name"):
        tracker.experiment("other")


def test_a_deleted_experiment_is_reported_not_silently_recreated(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "artifacts"))
    MlflowClient(tracker.tracking_uri).delete_experiment(tracker.experiment("gone", create=True).id)
    with pytest.raises(AllclsError, match="experiment 'gone' is deleted: restore it"):
        tracker.experiment("gone", create=True)


def test_a_run_that_raises_is_marked_failed_with_the_error(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "artifacts"))
    with (pytest.raises(ValueError),
          tracker.open_run(tracker.experiment("exp", create=True), "doomed", {"stage": "train"}) as opened):
        raise ValueError("boom")
    run = tracker.get_run(opened.run_id)
    assert run.info.status == "FAILED" and run.data.tags["error"] == "ValueError: boom"


def test_a_stage_run_carries_its_provenance_and_config_and_fails_honestly(train_cfg, tmp_path):
    cfg = train_cfg()
    tracker = Tracker(cfg.logger.tracking_uri, cfg.logger.artifact_location)
    experiment, job = tracker.experiment("exp", create=True), Job.of(cfg)
    with tracker.stage_run(experiment, run_schema.EVALUATE, "eval-test", {"dataset": "d"}, job) as opened:
        pass
    run = tracker.get_run(opened.run_id)
    tags = run.data.tags
    assert tags["stage"] == "evaluate" and tags["dataset"] == "d" and tags["sweep_id"] == "output"
    assert tags["git_commit"] and tags["allcls_version"] and run.info.status == "FINISHED"
    client = MlflowClient(tracker.tracking_uri)
    assert {"config/config.yaml", "config/overrides.yaml"} <= artifacts(client, run.info.run_id)
    with (pytest.raises(ValueError),
          tracker.stage_run(experiment, run_schema.TRAIN, "doomed", {}, job, parent_run_id=run.info.run_id) as child):
        raise ValueError("boom")
    failed = tracker.get_run(child.run_id)
    assert failed.info.status == "FAILED" and failed.data.tags["mlflow.parentRunId"] == run.info.run_id


def test_a_model_uri_without_a_version_or_an_alias_is_refused_naming_both(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "artifacts"))
    for uri in ("models:/cells", "models:/cells@", "models:/@champion"):
        with pytest.raises(ModelUnavailable, match="names no version: use models:/<name>@<alias> or /<version>"):
            load_model(tracker, uri)


def test_a_missing_artifact_is_named_and_a_present_one_downloads(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "artifacts"))
    with tracker.open_run(tracker.experiment("exp", create=True), "r", {}) as run:
        run.log_text("hello", "notes/a.txt")
    run_id = run.run_id
    with pytest.raises(MissingArtifact, match=f"Run {run_id} has no artifact notes/b.txt"):
        tracker.download(run_id, "notes/b.txt", tmp_path / "dl")
    assert tracker.download_if_present(run_id, "notes/b.txt", tmp_path / "dl") is None
    assert tracker.download_if_present(run_id, "missing/a.txt", tmp_path / "dl") is None
    assert tracker.download(run_id, "notes/a.txt", tmp_path / "dl").read_text() == "hello"


def test_summary_lists_runs_and_the_command_to_browse_them(train_cfg, tmp_path):
    cfg = train_cfg()
    train(cfg)
    tracker = Tracker(cfg.logger.tracking_uri)
    experiment = tracker.experiment(cfg.experiment_name)
    sweep = "output"  # outside Hydra's launcher the sweep id is the output folder's name
    text = summary_text(tracker.tracking_uri, experiment, tracker.sweep_runs(experiment, sweep), sweep,
                        "val/f1_weighted_best")
    assert "1 MLflow run(s) in experiment 'synthetic-cnmc'" in text
    assert "custom_cnn-basic-s0" in text and "FINISHED" in text
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlruns/mlflow.db" in text
    # MLflow 3 opens an experiment on a GenAI overview: the address goes to the runs view, in model training mode
    assert f"then open http://127.0.0.1:5000/#/experiments/{experiment.id}/runs?workflowType=machine_learning" in text
    assert 'tags.sweep_id = "output"' in text


def test_a_tracking_server_is_browsed_at_its_own_address():
    from allcls.tracking.store import browse_command

    assert browse_command("http://mlflow.lab:5000/", "7", "abc") == \
        "http://mlflow.lab:5000/#/experiments/7/runs/abc?workflowType=machine_learning"
    assert browse_command("http://mlflow.lab:5000") == "http://mlflow.lab:5000"


def test_an_unreachable_tracking_server_is_refused_in_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    """Nothing listens on the port: train.py, ensemble.py, evaluate.py, packaging and prediction each
    stop with one line naming the URI (exit 2) within seconds, instead of MLflow's minutes of
    retries, before a dataset is read or written."""
    uri = f"http://127.0.0.1:{free_port()}"
    run_id, model = "run_id=0123456789abcdef0123456789abcdef", "model=models:/cells@champion"
    (tmp_path / "incoming").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "incoming" / "cell.png")  # what prediction is given
    for main, program, args in ((train_main, "train.py", [*FAST, *SMALL_SYNTHETIC]),
                                (ensemble_main, "ensemble.py", ["experiment_name=synthetic-cnmc", "sweep_id=latest"]),
                                (evaluate_main, "evaluate.py", [run_id]), (package_main, "allcls-package", [run_id]),
                                (predict_main, "allcls-predict", [model, f"input={tmp_path / 'incoming'}"])):
        started = time.monotonic()
        result = run_entry(main, *args, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys, program=program,
                           env_extra={"MLFLOW_TRACKING_URI": uri})
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.startswith(f"error: Cannot reach the MLflow tracking server {uri}"), result.stderr[-2000:]
        assert len(result.stderr.strip().splitlines()) == 1 and time.monotonic() - started < 15, program
    assert not (tmp_path / "data").exists()  # the synthetic dataset was never written


@pytest.mark.slow
def test_jobs_started_at_once_on_a_fresh_store_all_finish(tmp_path):
    """Parallel jobs on one new SQLite store: MLflow's table creation used to race ("duplicate
    column name") and lose runs; each job now opens the fresh store under a lock. Started in the
    same second, they also get folders of their own (the default folder names the microsecond).
    (Three jobs race as four did; eight jobs at once on a tracking server: test_postgres.py.)"""
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    jobs = [subprocess.Popen([sys.executable, str(PROJECT / "train.py"), *FAST, *SMALL_SYNTHETIC, f"seed={seed}"],
                             cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for seed in range(3)]
    errors = [job.communicate(timeout=600)[1] for job in jobs]
    assert [job.returncode for job in jobs] == [0] * 3, "\n".join(e[-1500:] for e in errors)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("synthetic-cnmc").experiment_id])
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1", "2"]
    assert len(list(tmp_path.glob("outputs/train/*/*/checkpoints/best.ckpt"))) == 3
    for run in runs:
        assert run.info.status == "FINISHED"
        assert {"checkpoints/best.ckpt", "predictions/val.parquet", "predictions/test.parquet"} <= \
            artifacts(client, run.info.run_id)


@pytest.mark.slow
def test_a_server_that_goes_away_mid_run_loses_nothing_and_upload_sends_it_when_it_is_back(tmp_path, capsys):
    """Training logs to a real `mlflow server`, which is stopped by PID after the first epoch:
    training goes on and finishes, keeping
    what the run would have logged in its folder; `allcls-runs upload` sends it to the
    same server, restarted, and the run is FINISHED with its whole history and prediction tables."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
              "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
              "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": url, "PYTHONUNBUFFERED": "1"}
    overrides = [*FAST, *SMALL_SYNTHETIC, "logger=mlflow_server", "dataset.reader.cells_per_subject=20",
                 "data.batch_size=4", "trainer.max_epochs=2", "callbacks.early_stopping=null"]
    client = MlflowClient(url)
    with served(server, f"{url}/health", tmp_path / "server.log", timeout=120):
        with open(tmp_path / "job.log", "w") as log:
            job = subprocess.Popen([sys.executable, str(PROJECT / "train.py"), *overrides], cwd=tmp_path, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
        run_id = None
        deadline = time.time() + 240
        while job.poll() is None and time.time() < deadline:
            found = re.search(r"MLflow run ([0-9a-f]{32})", (tmp_path / "job.log").read_text())
            run_id = found.group(1) if found else None
            if run_id and client.get_metric_history(run_id, "val/loss"):
                break
            time.sleep(0.2)
        assert run_id and job.poll() is None, (tmp_path / "job.log").read_text()[-3000:]
    assert job.wait(timeout=300) == 0, (tmp_path / "job.log").read_text()[-3000:]
    said = (tmp_path / "job.log").read_text()
    assert "stopped answering" in said and "allcls-runs upload" in said
    (folder,) = [p.parent for p in (tmp_path / "outputs").rglob("mlflow_run.json")]
    assert (folder / "mlflow_offline.jsonl").is_file() and (folder / "predictions" / "test.parquet").is_file()

    refused = upload(folder, capsys)
    assert refused.returncode == 2 and f"Cannot reach the MLflow tracking server {url}" in refused.stderr
    with served(server, f"{url}/health", tmp_path / "server-again.log", timeout=120):
        sent = upload(folder, capsys)
        assert sent.returncode == 0 and "The run is FINISHED" in sent.stdout, sent.stdout + sent.stderr
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and "test/f1_weighted" in run.data.metrics
        assert len(client.get_metric_history(run_id, "val/loss")) == 2
        assert {"predictions/val.parquet", "predictions/test.parquet", "checkpoints/best.ckpt"} <= \
            artifacts(client, run_id)
        experiment = client.get_experiment(run.info.experiment_id)
        assert experiment.artifact_location.startswith("mlflow-artifacts:")  # the server decides where they go
        local = client.download_artifacts(run_id, "predictions/test.parquet", str(tmp_path / "download"))
        assert len(read_table(local)) > 0
        assert not (tmp_path / "mlruns").exists()  # nothing went to a local store by the side
        again = upload(folder, capsys)
        assert again.returncode == 2 and "uploaded already" in again.stderr


def upload(folder: Path, capsys) -> subprocess.CompletedProcess:
    """`allcls-runs upload <folder>`, run in this process."""
    capsys.readouterr()  # what came before is not this command's
    try:
        code = runs_main(["upload", str(folder)])
    except SystemExit as stopped:
        code = stopped.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["allcls-runs", "upload", str(folder)], code, out, err)
