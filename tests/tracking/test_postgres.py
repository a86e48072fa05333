"""The README's answer for a lab whose sweeps outgrow one SQLite file, as such a lab runs it: a
PostgreSQL database behind `mlflow server` (artifacts proxied by the server), four training jobs of
one `-m` sweep writing to it at once (submitit's local executor, the code path of SLURM), then their
ensemble, packaged and registered, all through the server. Run here, it found two things SQLite
hides: a model card too long for the registry's column, and jobs racing to log the same dataset."""

import base64
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from servers import mlflow_server, postgres

from allcls.ensemble.cli import main as ensemble_main
from allcls.serving.cli import package as package_main
from allcls.tracking.run import Run

from helpers import FAST, SMALL_SYNTHETIC, run_entry, run_script

JOBS = 4  # processes writing at once (benchmarks/parallel_writers.py measures up to 32 writers)
SEEDS = "seed=" + ",".join(str(seed) for seed in range(JOBS))


@pytest.mark.slow
def test_a_sweep_of_parallel_jobs_an_ensemble_and_a_registered_model_through_a_server_on_postgresql(
        tmp_path, monkeypatch, capsys):
    with postgres(tmp_path, durable=False) as database, \
            mlflow_server(database, tmp_path / "server-artifacts", tmp_path / "server.log", workers=1) as url:
        swept = run_script("train.py", "-m", "hydra/launcher=submitit_local", "logger=mlflow_server", *FAST,
                           *SMALL_SYNTHETIC, SEEDS, cwd=tmp_path, timeout=500, env_extra={"MLFLOW_TRACKING_URI": url})
        assert swept.returncode == 0, swept.stderr[-3000:]
        server = {"MLFLOW_TRACKING_URI": url}
        compared = run_entry(ensemble_main, "experiment_name=synthetic-cnmc", "sweep_id=latest", "bootstrap=20",
                             "~schemes.simplex_grid",
                             "logger=mlflow_server", cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys,
                             program="ensemble.py", env_extra=server)
        assert compared.returncode == 0, compared.stderr[-3000:]
        packaged = run_entry(package_main, "run_id=latest", "experiment_name=synthetic-cnmc", "register_as=lab",
                             "alias=champion", "coverage=0.7", "bootstrap=0", "ood.probes=false",
                             "logger=mlflow_server", cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys,
                             program="allcls-package", env_extra=server)
        assert packaged.returncode == 0, packaged.stderr[-3000:]

        client = MlflowClient(url)
        experiment = client.get_experiment_by_name("synthetic-cnmc")
        assert experiment.artifact_location.startswith("mlflow-artifacts:")  # the server keeps the files
        runs = client.search_runs([experiment.experiment_id])
        stages = {stage: [r for r in runs if r.data.tags.get("stage") == stage] for stage in ("train", "sweep",
                                                                                             "ensemble")}
        assert sorted(r.data.params["seed"] for r in stages["train"]) == [str(seed) for seed in range(JOBS)]
        assert {r.info.status for r in runs} == {"FINISHED"}  # nothing left RUNNING, nothing FAILED
        (sweep,) = stages["sweep"]
        assert {r.data.tags["mlflow.parentRunId"] for r in stages["train"]} == {sweep.info.run_id}
        assert len({r.data.tags["pid"] for r in stages["train"]}) == JOBS  # that many processes wrote at once
        for run in stages["train"]:
            assert len(client.get_metric_history(run.info.run_id, "val/loss")) == 1  # every epoch, once
        version = client.get_model_version_by_alias("lab", "champion")
        assert version.tags["run_id"] == stages["ensemble"][0].info.run_id
        mlflow.set_tracking_uri(url)
        cell = next(Path(tmp_path, "data").rglob("*.bmp"))
        rows = mlflow.pyfunc.load_model("models:/lab@champion").predict(
            pd.DataFrame({"image": [base64.b64encode(cell.read_bytes()).decode()]}))
        assert rows.loc[0, "error"] == "" and rows.loc[0, "label"] in ("hem", "all")
        jobs_that_log_the_same_dataset_at_once_all_get_it(client, url, experiment.experiment_id)
    assert not (tmp_path / "mlruns").exists()  # nothing went to a local store by the side


def jobs_that_log_the_same_dataset_at_once_all_get_it(client: MlflowClient, url: str, experiment_id: str) -> None:
    """The jobs of a sweep log the same dataset splits at the same moment: a server on PostgreSQL
    refused all but the first of each (a unique key, where SQLite makes writers queue), and the job
    crashed. Eight runs racing, four times: every one gets its inputs."""
    racing = [Run(client, url, client.create_run(experiment_id).info.run_id) for _ in range(8)]
    for attempt in range(4):
        with ThreadPoolExecutor(len(racing)) as pool:
            logged = [pool.submit(run.log_splits, "race", "/data", f"digest-{attempt}", {"train": {"hem": 1}})
                      for run in racing]
            for future in logged:
                future.result()
    for run in racing:
        assert len(client.get_run(run.run_id).inputs.dataset_inputs) == 4
        run.terminate("FINISHED")
