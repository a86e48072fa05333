"""`make demo` as a user sees it: the transfer-learning sweep on the default synthetic data (one
tracked run per job, nested under the launch's own run, and a summary of them), then the comparison
of weighting schemes, whose ranking must mean something (members that differ, schemes that do not
all tie), then the chosen ensemble packaged and registered."""

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from allcls.ensemble.cli import main as ensemble_main
from allcls.models.weights import main as weights_main
from allcls.serving.cli import package as package_main
from allcls.training.cli import main as train_main

from helpers import run_entry

DEMO_SWEEP = ["-m", "experiment=quickstart", "backbone=mobilenetv2,efficientnet_lite0", "seed=0,1",
              "trainer.enable_progress_bar=false"]


@pytest.mark.slow
def test_the_demo_comparison_ranks_schemes_that_differ(tmp_path, monkeypatch, capsys):
    """The demo's commands, each through its entry point in this process (as the recipes' test runs
    theirs): the weights converted, the sweep, the comparison, the packaging."""
    for name in ("mobilenetv2_100", "tf_efficientnet_lite0"):  # what `make demo` converts first
        assert weights_main(["--packaged", name, str(tmp_path / "data" / "weights" / f"{name}_in1k.pth")]) == 0

    def demo(main, program: str, *args: str):
        return run_entry(main, *args, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys, program=program)

    trained = demo(train_main, "train.py", *DEMO_SWEEP)
    assert trained.returncode == 0, trained.stderr[-3000:]
    compared = demo(ensemble_main, "ensemble.py", "experiment_name=synthetic-cnmc", "sweep_id=latest")
    assert compared.returncode == 0, compared.stderr[-3000:]
    packaged = demo(package_main, "allcls-package", "run_id=latest", "experiment_name=synthetic-cnmc",
                    "register_as=demo-ensemble", "alias=champion", "coverage=0.8", "referral.protect=all",
                    "referral.max_miss_rate=0.2")
    assert packaged.returncode == 0, packaged.stderr[-3000:]
    assert "then open http://127.0.0.1:5000/#/models/demo-ensemble/versions/1" in packaged.stdout  # its page

    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("synthetic-cnmc")
    members = client.search_runs([experiment.experiment_id], "tags.stage = 'train'")
    validation = sorted(run.data.metrics["val/f1_weighted_best"] for run in members)
    assert len(members) == 4 and validation[0] < validation[-1]  # the members differ
    the_sweep_is_one_tracked_run_with_its_jobs_nested(client, experiment.experiment_id, members, trained.stdout)
    (ensemble,) = client.search_runs([experiment.experiment_id], "tags.stage = 'ensemble'")
    table = pd.read_csv(client.download_artifacts(ensemble.info.run_id, "comparison/comparison.csv", str(tmp_path)))
    ranked = table.dropna(subset=["rank"])["cv_f1_weighted"]
    assert ranked.nunique() >= 3 and ranked.max() - ranked.min() >= 0.02, ranked.tolist()  # not a table of ties
    assert int(members[0].data.params["n_val"]) >= 100  # validated on more than a handful of cells
    version = client.get_model_version_by_alias("demo-ensemble", "champion")  # the demo ends with a registered model
    assert version.tags["run_id"] == ensemble.info.run_id


def the_sweep_is_one_tracked_run_with_its_jobs_nested(client, experiment_id: str, jobs: list, printed: str) -> None:
    """One FINISHED run per job, each with its backbone, job number and the split they share; the
    launch is one run of its own that says what was typed and which job did best, its jobs nested
    under it; the launch ends with a table of the runs and how to browse them."""
    assert [r.info.status for r in jobs] == ["FINISHED"] * 4
    assert {r.data.tags["backbone"] for r in jobs} == {"mobilenetv2_100", "tf_efficientnet_lite0"}
    assert {r.data.tags["job_num"] for r in jobs} == {"0", "1", "2", "3"}
    sweep_ids = {r.data.tags["sweep_id"] for r in jobs}
    assert len(sweep_ids) == 1 and next(iter(sweep_ids)).startswith("multirun/train/")
    assert len({r.data.tags["split_hash"] for r in jobs}) == 1  # comparable: same split
    assert "4 MLflow run(s)" in printed and "mlflow ui --backend-store-uri sqlite:///" in printed
    (sweep,) = client.search_runs([experiment_id], "tags.stage = 'sweep'")
    assert sweep.info.status == "FINISHED" and sweep.data.tags["sweep_id"] in sweep_ids
    assert {r.data.tags["mlflow.parentRunId"] for r in jobs} == {sweep.info.run_id}
    assert sweep.data.tags["mlflow.note.content"].startswith("python train.py -m ")
    assert sweep.data.tags["mlflow.source.name"].endswith("train.py") and sweep.data.tags["git_commit"]
    assert "backbone=mobilenetv2,efficientnet_lite0" in sweep.data.tags["mlflow.note.content"]
    best = max(jobs, key=lambda r: r.data.metrics["val/f1_weighted_best"])
    assert sweep.data.metrics["val/f1_weighted_best"] == best.data.metrics["val/f1_weighted_best"]
    assert sweep.data.tags["best_run_id"] == best.info.run_id and sweep.data.tags["best_run_name"] == best.info.run_name
    assert f"#/experiments/{experiment_id}/runs/{sweep.info.run_id}" in printed
