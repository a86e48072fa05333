"""Jobs that stop and continue: SIGTERM and SIGKILL in the middle of fit, runs left RUNNING, and
`resume` (a folder, a run id, `last`, a SLURM requeue) continuing into the same MLflow run."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from allcls.errors import AllclsError
from allcls.jobs.cli import main as runs_main
from allcls.training.cli import main as train_main
from allcls.training.task import train

from helpers import FAST, PROJECT, SMALL_SYNTHETIC, artifacts, compose_train, run_entry

# Epochs of about 60 small batches (a second or two each): long enough to stop a job in the middle of one.
SLOW_EPOCHS = [*FAST, *SMALL_SYNTHETIC, "dataset.reader.cells_per_subject=20", "data.batch_size=4",
               "trainer.log_every_n_steps=1", "callbacks.early_stopping=null"]


def start_training(tmp_path: Path, log: Path, overrides: list[str], ready, env_extra: dict | None = None):
    """train.py in a subprocess of tmp_path; returns it and its run id once `ready(client, run_id)`."""
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env.update(env_extra or {})
    with open(log, "w") as output:
        job = subprocess.Popen([sys.executable, str(PROJECT / "train.py"), *overrides], cwd=tmp_path, env=env,
                               stdout=output, stderr=subprocess.STDOUT)
    client, deadline = None, time.time() + 240
    while time.time() < deadline and job.poll() is None:
        found = re.search(r"MLflow run ([0-9a-f]{32})", log.read_text())
        if found:
            client = client or MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
            if ready(client, found.group(1)):
                return job, found.group(1)
        time.sleep(0.1)
    job.kill()
    raise AssertionError(log.read_text()[-3000:])


def steps(client, run_id, metric) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, metric)]


def in_the_second_epoch(client, run_id) -> bool:
    """Epoch 0 is over (validated, last.ckpt saved) and epoch 1 has trained a few batches."""
    validated = steps(client, run_id, "val/loss")
    return len(validated) == 1 and max(steps(client, run_id, "train/loss_step"), default=0) >= validated[0] + 5


def stop(job: subprocess.Popen, signum: int, log: Path) -> int:
    try:
        job.send_signal(signum)
        return job.wait(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()


def test_sigterm_saves_a_checkpoint_marks_the_run_killed_and_a_requeued_job_resumes_it(train_cfg, mlflow_client,
                                                                                        tmp_path, monkeypatch):
    """What SLURM or `kill` sends, in the middle of an epoch (here: from the third training step of
    the second epoch): the batch ends, last.ckpt is saved there, the run ends KILLED with the reason
    and the process exits 143 (a failure to a scheduler). Started again in its own folder as SLURM
    requeues it ($SLURM_RESTART_COUNT), the job continues into the same run and finishes it."""
    from allcls.models.lit_classifier import LitClassifier

    training_step = LitClassifier.training_step

    def terminate_in_the_second_epoch(self, batch, batch_idx):
        if self.current_epoch == 1 and batch_idx == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return training_step(self, batch, batch_idx)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LitClassifier, "training_step", terminate_in_the_second_epoch)
        with pytest.raises(SystemExit) as stopped:
            train(train_cfg("trainer.max_epochs=2", "callbacks.early_stopping=null"))
    assert stopped.value.code == 143
    (run,) = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("synthetic-cnmc").experiment_id])
    run_id = run.info.run_id
    assert run.info.status == "KILLED" and run.data.tags["error"] == "stopped by SIGTERM"
    folder = Path(run.data.tags["output_dir"])
    saved = torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    per_epoch = steps(mlflow_client, run_id, "val/loss")[0] + 1
    assert saved["epoch"] == 1 and saved["global_step"] == per_epoch + 3  # mid-epoch, at the batch's end

    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    train(compose_train(tmp_path, ["trainer.max_epochs=2", "callbacks.early_stopping=null"], output_dir=folder))
    run = mlflow_client.get_run(run_id)
    assert run.info.status == "FINISHED" and "error" not in run.data.tags
    assert len(steps(mlflow_client, run_id, "val/loss")) == 2
    assert {"predictions/val.parquet", "predictions/test.parquet"} <= artifacts(mlflow_client, run_id)


def interrupted(train_cfg, at_batch: int, signals: int, finished: list[int]) -> SystemExit:
    """A job Ctrl-C'd `signals` times in its first epoch's batch `at_batch`; `finished` gets each batch
    that ran on past the signals. Returns how the job ended."""
    from allcls.models.lit_classifier import LitClassifier

    training_step = LitClassifier.training_step

    def interrupt(self, batch, batch_idx):
        if batch_idx == at_batch:
            for _ in range(signals):
                os.kill(os.getpid(), signal.SIGINT)
        finished.append(batch_idx)
        return training_step(self, batch, batch_idx)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LitClassifier, "training_step", interrupt)
        with pytest.raises(SystemExit) as stopped:  # Lightning turns KeyboardInterrupt into exit 1
            train(train_cfg())
    return stopped.value


def test_ctrl_c_saves_a_checkpoint_marks_the_run_killed_and_resume_by_run_id_finishes_it(train_cfg, mlflow_client,
                                                                                          tmp_path):
    """Ctrl-C in the middle of an epoch: the batch ends, last.ckpt is saved there, the run ends KILLED
    with the reason and the process exits non-zero. resume=<run id> continues it into the same run,
    which records the launch that resumed it."""
    stopped = interrupted(train_cfg, 2, 1, finished := [])
    assert stopped.code == 1 and finished == [0, 1, 2]
    (run,) = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("synthetic-cnmc").experiment_id])
    assert run.info.status == "KILLED" and run.data.tags["error"] == "interrupted (SIGINT / Ctrl-C)"
    saved = torch.load(tmp_path / "output" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 3

    resumed = train_cfg(f"resume={run.info.run_id}")
    train(resumed)
    run = mlflow_client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED" and "error" not in run.data.tags
    assert len(steps(mlflow_client, run.info.run_id, "val/loss")) == 1
    assert run.data.tags["sweep_id"] == "output" and run.data.tags["resumed_in"] == "output-2" == \
        Path(resumed.hydra.runtime.output_dir).name
    assert len(mlflow_client.search_runs([run.info.experiment_id])) == 1


def test_a_second_ctrl_c_stops_at_once(train_cfg, mlflow_client, tmp_path):
    """The first Ctrl-C waits for the batch in progress; a second one stops in the middle of it (the
    rest of that batch never runs, no checkpoint is saved there), and the run still ends KILLED."""
    stopped = interrupted(train_cfg, 2, 2, finished := [])
    assert stopped.code == 1 and finished == [0, 1]
    (run,) = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("synthetic-cnmc").experiment_id])
    assert run.info.status == "KILLED" and run.data.tags["error"] == "interrupted (SIGINT / Ctrl-C)"
    assert not (tmp_path / "output" / "checkpoints" / "last.ckpt").exists()


@pytest.mark.slow
def test_a_job_killed_mid_epoch_is_found_marked_and_resumed_into_one_finished_run(tmp_path, monkeypatch, capsys):
    """SIGKILL leaves no chance to end the run. `allcls-runs cleanup` lists it, and marks
    it FAILED with the reason only with --mark (a live process's run is listed and left alone).
    `resume=last` then continues it from the last epoch's last.ckpt, into the same run; only the
    interrupted epoch is trained twice. A command that changes a setting is refused first, naming
    it, and changes nothing."""
    overrides = [*SLOW_EPOCHS, "trainer.max_epochs=3"]
    job, run_id = start_training(tmp_path, tmp_path / "job.log", overrides, in_the_second_epoch)
    job.kill()
    job.wait(timeout=60)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    experiment = client.get_run(run_id).info.experiment_id
    alive = client.create_run(experiment, tags={"host": socket.gethostname(), "pid": str(os.getpid())})
    # another host's run, whose pid is the killed job's: gone here, but that says nothing of the other host
    elsewhere = client.create_run(experiment, tags={"host": "another-host", "pid": str(job.pid)})

    listed = cleanup(tmp_path, monkeypatch, capsys)
    assert listed.returncode == 0 and run_id in listed.stdout and "is gone" in listed.stdout
    assert "is still alive" in listed.stdout and "--mark" in listed.stdout
    assert f"process {job.pid} on another-host cannot be checked from here" in listed.stdout
    assert client.get_run(run_id).info.status == "RUNNING"  # listing changes nothing
    marked = cleanup(tmp_path, monkeypatch, capsys, "--mark")
    assert marked.returncode == 0 and "marked FAILED" in marked.stdout, marked.stdout + marked.stderr
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and "ended without ending the run" in run.data.tags["error"]
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"
    assert client.get_run(elsewhere.info.run_id).info.status == "RUNNING"
    client.delete_run(alive.info.run_id)
    client.delete_run(elsewhere.info.run_id)

    changed = run_entry(train_main, "resume=last", "trainer.max_epochs=5", cwd=tmp_path, monkeypatch=monkeypatch,
                        capsys=capsys)
    assert changed.returncode == 2 and "trainer.max_epochs=5" in changed.stderr and "ran with" in changed.stderr
    assert client.get_run(run_id).info.status == "FAILED"

    resumed = run_entry(train_main, "resume=last", cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs = client.search_runs([experiment])
    assert [r.info.run_id for r in runs] == [run_id] and runs[0].info.status == "FINISHED"
    assert "error" not in runs[0].data.tags
    assert "1 MLflow run(s)" in resumed.stdout and "FINISHED" in resumed.stdout  # the launch's summary

    validated = steps(client, run_id, "val/loss")
    per_epoch = validated[0] + 1
    assert validated == [per_epoch - 1, 2 * per_epoch - 1, 3 * per_epoch - 1]  # each epoch once, at its step
    trained = steps(client, run_id, "train/loss_step")
    twice = {step for step in trained if trained.count(step) > 1}
    assert twice and all(per_epoch <= step < 2 * per_epoch for step in twice)  # only the interrupted epoch
    assert set(range(3 * per_epoch)) <= set(trained)
    found = artifacts(client, run_id)
    assert {"predictions/val.parquet", "predictions/test.parquet", "checkpoints/best.ckpt"} <= found
    assert any(name.startswith("logs/resumed/") for name in found)


def cleanup(folder: Path, monkeypatch, capsys, *args: str) -> subprocess.CompletedProcess:
    """`allcls-runs cleanup *args` run from `folder`, in this process."""
    monkeypatch.chdir(folder)
    code = runs_main(["cleanup", *args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["allcls-runs", "cleanup", *args], code, out, err)


def test_resume_refuses_what_it_cannot_continue(train_cfg, mlflow_client, tmp_path):
    """A finished run, a folder that holds no job, a word that is neither, and `last` with nothing
    unfinished: each one line, and the finished run is left as it was. So are a job whose process
    still runs and one without last.ckpt."""
    train(train_cfg())
    finished = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("synthetic-cnmc").experiment_id])[0]
    for resume, says in [(finished.info.run_id, "has finished"), (str(tmp_path / "output"), "has finished"),
                         (str(tmp_path), "holds no training job"), ("latest", "neither a folder nor"),
                         ("0123456789abcdef0123456789abcdef", "No MLflow run '0123456789abcdef0123456789abcdef'"),
                         ("last", "no unfinished training run")]:
        with pytest.raises(AllclsError, match=says):
            train(train_cfg(f"resume={resume}"))
    assert mlflow_client.get_run(finished.info.run_id).info.status == "FINISHED"
    assert {"mlflow_run.json", "config.resolved.yaml"} <= {p.name for p in (tmp_path / "output").iterdir()}

    # the same job as if its process still ran on this host, then as if stopped before its first epoch ended
    run_id, living = finished.info.run_id, os.getppid()
    mlflow_client.update_run(run_id, "RUNNING")
    mlflow_client.set_tag(run_id, "pid", str(living))
    with pytest.raises(AllclsError, match=f"still being trained by process {living}: stop it first"):
        train(train_cfg(f"resume={run_id}"))
    mlflow_client.set_terminated(run_id, "KILLED")
    (tmp_path / "output" / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(AllclsError, match="has no checkpoints/last.ckpt: the job stopped before its first epoch"):
        train(train_cfg(f"resume={run_id}"))
    assert mlflow_client.get_run(run_id).info.status == "KILLED"


def test_a_sigterm_that_lightning_sees_first_still_saves_and_fails_the_job(train_cfg, mlflow_client, tmp_path):
    """Lightning's own SIGTERM handler stops at the end of a batch, after the callbacks' hooks, and
    would exit 0. A SIGTERM that arrives after allcls's hook (here: from the model's own hook,
    which Lightning calls after the callbacks') still saves last.ckpt there and ends KILLED, 143.
    resume=<the job's folder> continues it once its damaged folder is repaired."""
    from allcls.models.lit_classifier import LitClassifier

    def terminate_after_the_third_batch(self, outputs, batch, batch_idx):
        if batch_idx == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.MonkeyPatch.context() as patch, pytest.raises(SystemExit) as stopped:
        patch.setattr(LitClassifier, "on_train_batch_end", terminate_after_the_third_batch)
        train(train_cfg())
    assert stopped.value.code == 143
    saved = torch.load(tmp_path / "output" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 3
    (run,) = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("synthetic-cnmc").experiment_id])
    assert run.info.status == "KILLED" and run.data.tags["error"] == "stopped by SIGTERM"
    a_damaged_job_folder_is_refused_and_the_run_left_killed(train_cfg, mlflow_client, tmp_path / "output",
                                                            run.info.run_id)
    # repaired, resume=<the job's folder> continues it into the same run
    train(train_cfg(f"resume={tmp_path / 'output'}"))
    run = mlflow_client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED" and "error" not in run.data.tags
    assert len(steps(mlflow_client, run.info.run_id, "val/loss")) == 1
    assert len(mlflow_client.search_runs([run.info.experiment_id])) == 1


class Payload:
    """What a malicious checkpoint carries: unpickling it would run a command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def a_damaged_job_folder_is_refused_and_the_run_left_killed(train_cfg, client, folder: Path, run_id: str) -> None:
    """A cut last.ckpt, a text file in its place, one that carries Python objects, a cut job record:
    each refused in one line before the run is reopened (it stays KILLED), the payload never run,
    and no advice to load anything unsafely."""
    last, record = folder / "checkpoints" / "last.ckpt", folder / "mlflow_run.json"
    whole, kept_record = last.read_bytes(), record.read_text()
    marker = folder / "payload-ran"
    for damage, says in [(lambda: last.write_bytes(whole[: len(whole) // 2]), "is not a readable checkpoint"),
                         (lambda: last.write_text("epoch=3\n"), "is not a readable checkpoint"),
                         (lambda: torch.save({"state_dict": {}, "x": Payload(marker)}, last), "holds Python objects"),
                         (lambda: record.write_text(kept_record[:40]), "mlflow_run.json is damaged")]:
        damage()
        with pytest.raises(AllclsError, match=says) as refused:
            train(train_cfg(f"resume={folder}"))
        assert "weights_only" not in str(refused.value) and "\n" not in str(refused.value)
        assert client.get_run(run_id).info.status == "KILLED"
        last.write_bytes(whole)
        record.write_text(kept_record)
    assert not marker.exists()
