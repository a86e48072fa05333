"""train.py as users run it: `-m` sweeps (one MLflow run per job), DDP inside sweeps, Optuna, and
the one-line error for a user's mistake. The sweeps run the real script in a subprocess; a refusal
before any work runs its entry point in this process."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from allcls.config.entry import CONF_DIR
from allcls.predictions import read_table
from allcls.training.cli import main

from helpers import PROJECT, SMALL_SYNTHETIC, run_entry, run_script

CLI_FAST = ["backbone=custom_cnn", "backbone.input_size=32", *SMALL_SYNTHETIC, "data.num_workers=0",
            "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def sweep_runs(folder: Path, experiment: str = "synthetic-cnmc", stage: str = "train"):
    """The store's client and the runs of one stage (the jobs; `sweep`: the launches' own runs)."""
    client = MlflowClient(f"sqlite:///{folder}/mlruns/mlflow.db")
    found = client.get_experiment_by_name(experiment)
    return client, client.search_runs([found.experiment_id], f"tags.stage = '{stage}'",
                                      order_by=["attributes.start_time ASC"])


def test_a_launch_that_stops_early_marks_its_own_run_failed(tmp_path):
    """A job's mistake ends the launch: its run is not left RUNNING, nor FINISHED."""
    result = run_script("train.py", "-m", *CLI_FAST, "trainer.max_epochs=0,1", cwd=tmp_path)
    assert result.returncode == 2 and "trainer.max_epochs" in result.stderr
    _, (sweep,) = sweep_runs(tmp_path, stage="sweep")
    assert sweep.info.status == "FAILED" and "before its last job" in sweep.data.tags["error"]


def test_user_mistake_ends_with_one_line_and_no_traceback(tmp_path, monkeypatch, capsys):
    result = run_entry(main, "dataset=cnmc", cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert result.returncode == 2
    assert "error: dataset.root is not set" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_every_config_group_with_its_options_and_creates_nothing(tmp_path, monkeypatch, capsys):
    """`train.py --help`: each config group of conf/ (Hydra's own aside) with every option it has, then
    the config; exit 0, and no store, data or job folder is made."""
    result = run_entry(main, "--help", cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert result.returncode == 0 and "== Config ==" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
    groups = result.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    listed = dict(line.split(": ", 1) for line in groups.splitlines() if ": " in line)
    shipped = {folder.name: ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
               for folder in CONF_DIR.iterdir() if folder.is_dir() and folder.name != "hydra"}
    assert listed == {name: options for name, options in shipped.items() if options}
    assert "backbone" in listed and "dataset" in listed and not list(tmp_path.iterdir())


@pytest.mark.parametrize(("typed", "says"), [
    (["backbone=resnet9000"], "backbone=resnet9000: there is no such backbone config (did you mean backbone=resnet5"),
    (["dataset=cnmcc"], "dataset=cnmcc: there is no such dataset config (did you mean dataset=cnmc?)"),
    (["data.batchsize=8"], "data.batchsize: there is no such key in data (did you mean data.batch_size?)"),
    (["backbon=vgg16"], "backbon: there is no such key at the top of the config (did you mean backbone?)"),
    (["data.skip_unreadable_images=true"], "data.skip_unreadable_images was renamed dataset.skip_unreadable_images"),
    (["-m", "hparams_search=optuna", "optuna_trials=0"], "optuna_trials=0 is out of range"),
    (["dataset=folder", "dataset.root=pyproject.toml"], "is a file, not a folder"),
])
def test_a_mistake_hydra_finds_ends_in_one_line_naming_the_closest_name(tmp_path, monkeypatch, capsys, typed, says):
    """Unknown config names and keys, a renamed key, an Optuna search of no trials, a dataset root
    that is a file: one line, exit 2, nothing created (no store, no study)."""
    (tmp_path / "pyproject.toml").write_text("a file\n")
    result = run_entry(main, *typed, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert result.returncode == 2 and says in result.stderr, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "optuna.db").exists()


def test_a_store_or_a_study_file_that_is_not_a_database_is_named_and_left_as_it_was(tmp_path, monkeypatch, capsys):
    """Where the MLflow store or the Optuna study is meant to be, a file that is something else
    (notes, say): one line naming it, and the file as it was."""
    (tmp_path / "mlruns").mkdir()
    store = tmp_path / "mlruns" / "mlflow.db"
    store.write_text("my notes\n")
    result = run_entry(main, *CLI_FAST, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert result.returncode == 2 and f"{store} is not an SQLite database" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and store.read_text() == "my notes\n"
    store.unlink()
    (tmp_path / "optuna.db").write_text("my notes\n")
    result = run_entry(main, "-m", "hparams_search=optuna", *CLI_FAST, cwd=tmp_path, monkeypatch=monkeypatch,
                       capsys=capsys)
    assert result.returncode == 2 and "optuna.db is not an SQLite database" in result.stderr, result.stderr[-2000:]
    assert (tmp_path / "optuna.db").read_text() == "my notes\n"


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
def test_an_optuna_search_stopped_after_two_of_four_trials_continues_where_it_stopped(tmp_path, monkeypatch,
                                                                                       capsys):
    """The study lives in optuna.db: the same command again runs only the missing trials, with
    values not drawn before, and each trial is a tracked job."""
    command = ["-m", "hparams_search=optuna", "optuna_trials=4", *CLI_FAST]
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen([sys.executable, str(PROJECT / "train.py"), *command], cwd=tmp_path, env=env,
                                 stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while first.poll() is None and time.time() < deadline:
            started = "MLflow run " in (tmp_path / "first.log").read_text()  # the store exists
            # Two trials the study holds as complete, not just two finished runs: the sweeper tells
            # the study after the job's run has finished, and a stop in between loses that trial.
            if started and len(finished(tmp_path)) >= 2 and completed_trials(tmp_path) >= 2:
                first.send_signal(signal.SIGTERM)
                break
            time.sleep(0.2)
        assert first.wait(timeout=120) != 0, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    assert len(finished(tmp_path)) == 2

    again = run_entry(main, *command, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 finished trial(s): 2 to go of 4" in again.stdout + again.stderr
    runs = finished(tmp_path)
    assert len(runs) == 4 and len({r.data.params["lr"] for r in runs}) == 4  # the sampler chose new values
    study = optuna.load_study(study_name="synthetic-cnmc", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 4
    assert "Best parameters" in again.stdout + again.stderr


def completed_trials(folder: Path) -> int:
    """The trials the Optuna study in `folder` holds as complete (none before it exists)."""
    if not (folder / "optuna.db").exists():
        return 0
    try:
        study = optuna.load_study(study_name="synthetic-cnmc", storage=f"sqlite:///{folder}/optuna.db")
    except KeyError:  # the file is there, the study not yet
        return 0
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def finished(folder: Path) -> list:
    """The finished training runs of the store in `folder` (none while it has no experiment yet)."""
    client = MlflowClient(f"sqlite:///{folder}/mlruns/mlflow.db")
    if client.get_experiment_by_name("synthetic-cnmc") is None:
        return []
    return [r for r in sweep_runs(folder)[1] if r.info.status == "FINISHED"]
