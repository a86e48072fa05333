"""Sweeps on the engines that run them beyond one machine, as users launch them: the submitit
launcher (its local executor, the same code path as SLURM's, including the requeue of a job out
of time) and a Ray cluster (a head started here on 127.0.0.1 and stopped by PID)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from helpers import FAST, SMALL_SYNTHETIC, free_port, run_script, served

CLI_FAST = [*FAST, *SMALL_SYNTHETIC]


def runs_by_stage(folder: Path) -> dict[str, list]:
    client = MlflowClient(f"sqlite:///{folder}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("synthetic-cnmc")
    found: dict[str, list] = {}
    for run in client.search_runs([experiment.experiment_id]):
        found.setdefault(run.data.tags["stage"], []).append(run)
    return found


@pytest.mark.slow
def test_submitit_runs_the_sweep_and_a_job_out_of_time_is_requeued_and_resumes_into_its_run(tmp_path):
    """The job trains for 30 s of fit time (Lightning's max_time, whose clock a checkpoint keeps)
    under a one-minute limit: submitit's SIGUSR2 comes 30 s after the start, before the job can
    finish, whatever the machine's speed; the job saves last.ckpt at the end of its batch, is
    requeued, and resumes into the same MLflow run, nested under the sweep's."""
    slow = ["dataset.reader.cells_per_subject=30", "data.batch_size=4", "callbacks.early_stopping=null"]
    result = run_script("train.py", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=1",
                        *CLI_FAST, *slow, "trainer.max_epochs=1000", '+trainer.max_time="00:00:00:30"',
                        cwd=tmp_path, timeout=540)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = runs_by_stage(tmp_path)
    (sweep,), (job,) = runs["sweep"], runs["train"]
    assert job.info.status == "FINISHED" and sweep.info.status == "FINISHED"
    assert job.data.tags["mlflow.parentRunId"] == sweep.info.run_id
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    epochs = [m.step for m in client.get_metric_history(job.info.run_id, "val/loss")]
    assert len(epochs) >= 2 and len(set(epochs)) == len(epochs)  # every epoch validated once
    logs = "".join(p.read_text() for p in (tmp_path / "multirun").rglob(".submitit/*/*_log.out"))
    assert "Caught signal SIGUSR2" in logs and "Requeued job" in logs and "Resuming from" in logs


@pytest.mark.slow
def test_a_sweep_runs_on_a_ray_cluster(tmp_path):
    """hydra-ray-launcher's `ray` launcher, sending the jobs to a running Ray head (conf/hydra/
    launcher/ray_cluster.yaml): every job a FINISHED run nested under the sweep's run."""
    port = free_port()
    ray = shutil.which("ray", path=str(Path(os.sys.executable).parent))
    head = [ray, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
            "--include-dashboard=false", "--disable-usage-stats", "--block"]
    with served(head, f"tcp://127.0.0.1:{port}", tmp_path / "ray.log", cwd=tmp_path):
        result = run_script("train.py", "-m", "hydra/launcher=ray_cluster", *CLI_FAST, "seed=0,1", cwd=tmp_path,
                            timeout=400, env_extra={"RAY_ADDRESS": f"127.0.0.1:{port}"})
    assert result.returncode == 0, result.stderr[-3000:]
    runs = runs_by_stage(tmp_path)
    (sweep,), jobs = runs["sweep"], runs["train"]
    assert sorted(r.data.params["seed"] for r in jobs) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in jobs) and sweep.info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in jobs} == {sweep.info.run_id}
    # The jobs ran in Ray's worker processes, not in the launching one.
    assert len({r.data.tags["pid"] for r in jobs} | {sweep.data.tags["pid"]}) == 3
    left = subprocess.run(["pgrep", "-f", f"gcs_server.*{port}"], capture_output=True, text=True).stdout
    assert not left.strip(), "the Ray head's processes outlived their stop"
