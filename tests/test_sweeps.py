"""train.py as users run it: `-m` sweeps (one MLflow run per job), DDP inside sweeps, Optuna,
and the one-line error for a user's mistake. Each test runs the real script in a subprocess."""

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from allcls.predictions import read_table

from helpers import SMALL_SYNTHETIC, run_script

CLI_FAST = ["backbone=custom_cnn", "backbone.input_size=32", *SMALL_SYNTHETIC, "data.num_workers=0",
            "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def sweep_runs(folder: Path, experiment: str = "synthetic-cnmc"):
    client = MlflowClient(f"sqlite:///{folder}/mlruns/mlflow.db")
    found = client.get_experiment_by_name(experiment)
    return client, client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


def test_multirun_gives_one_tracked_run_per_job_and_a_summary(tmp_path):
    result = run_script("train.py", "-m", *[o for o in CLI_FAST if not o.startswith("backbone=")],
                        "backbone=custom_cnn,mobilenetv2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    _, runs = sweep_runs(tmp_path)
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    assert {r.data.tags["backbone"] for r in runs} == {"custom_cnn", "mobilenetv2_100"}
    assert {r.data.tags["job_num"] for r in runs} == {"0", "1"}
    sweep_ids = {r.data.tags["sweep_id"] for r in runs}
    assert len(sweep_ids) == 1 and next(iter(sweep_ids)).startswith("multirun/train/")
    assert len({r.data.tags["split_hash"] for r in runs}) == 1  # comparable: same split
    # The launch ends with the runs' key metrics and how to browse them.
    assert "2 MLflow run(s)" in result.stdout and f"mlflow ui --backend-store-uri sqlite:///{tmp_path}" in result.stdout


def test_user_mistake_ends_with_one_line_and_no_traceback(tmp_path):
    result = run_script("train.py", "dataset=cnmc", cwd=tmp_path)
    assert result.returncode == 2
    assert "error: dataset.root is not set" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_group_option_is_refused_by_hydra_with_the_choices(tmp_path):
    result = run_script("train.py", "backbone=resnet9000", cwd=tmp_path)
    assert result.returncode != 0
    assert "Could not find 'backbone/resnet9000'" in result.stderr and "mobilenetv2" in result.stderr


@pytest.mark.slow
def test_ddp_jobs_inside_a_multirun_each_run_their_own_processes(tmp_path):
    """Lightning's DDP launcher re-runs sys.argv; without allcls.ddp each child would relaunch the
    whole sweep, and the second job would wait forever for children."""
    result = run_script("train.py", "-m", *CLI_FAST, "trainer=ddp_cpu", "seed=0,1", cwd=tmp_path, timeout=480)
    assert result.returncode == 0, result.stderr[-3000:]
    client, runs = sweep_runs(tmp_path)
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]  # no extra runs from child processes
    assert {r.data.params["strategy"] for r in runs} == {"DDPStrategy"}
    jobs = sorted(p for p in next((tmp_path / "multirun" / "train").glob("*/*")).iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    for job in jobs:  # each child wrote beside its own job, and launched no sweep of its own
        assert (job / "train_ddp_process_1.log").is_file()
        assert not list(job.rglob("multirun.yaml"))
    for run in runs:  # predictions come from one single-device pass: every sample once
        folder = str(tmp_path / run.info.run_id)
        local = Path(client.download_artifacts(run.info.run_id, "predictions", folder))
        manifest = client.download_artifacts(run.info.run_id, "data/split_manifest.csv", folder)
        test_ids = [line.split(",")[0] for line in Path(manifest).read_text().splitlines() if ",test," in line]
        assert sorted(read_table(local / "test.parquet")["sample_id"]) == sorted(test_ids)


@pytest.mark.slow
def test_optuna_search_runs_each_trial_as_a_tracked_job(tmp_path):
    result = run_script("train.py", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", *CLI_FAST,
                        cwd=tmp_path, timeout=480)
    assert result.returncode == 0, result.stderr[-3000:]
    _, runs = sweep_runs(tmp_path)
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert len({r.data.params["lr"] for r in runs}) == 2  # the sampler chose the values
    assert "Best parameters" in result.stdout + result.stderr
