"""`make demo` as a user sees it: the transfer-learning sweep on the default synthetic data, then the
comparison of weighting schemes, whose ranking must mean something (members that differ, schemes
that do not all tie), then the chosen ensemble packaged and registered."""

import subprocess

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from helpers import console_script, run_script

DEMO_SWEEP = ["-m", "experiment=quickstart", "backbone=mobilenetv2,efficientnet_lite0", "seed=0,1",
              "trainer.enable_progress_bar=false"]


@pytest.mark.slow
def test_the_demo_comparison_ranks_schemes_that_differ(tmp_path):
    for name in ("mobilenetv2_100", "tf_efficientnet_lite0"):  # what `make demo` converts first
        subprocess.run([console_script("allcls-weights"), "--packaged", name,
                        str(tmp_path / "data" / "weights" / f"{name}_in1k.pth")], check=True, capture_output=True)
    trained = run_script("train.py", *DEMO_SWEEP, cwd=tmp_path, timeout=900)
    assert trained.returncode == 0, trained.stderr[-3000:]
    compared = run_script("ensemble.py", "experiment_name=synthetic-cnmc", "sweep_id=latest", cwd=tmp_path)
    assert compared.returncode == 0, compared.stderr[-3000:]
    packaging = ["run_id=latest", "experiment_name=synthetic-cnmc", "register_as=demo-ensemble", "alias=champion",
                 "coverage=0.8"]
    packaged = subprocess.run([console_script("allcls-package"), *packaging], cwd=tmp_path, capture_output=True,
                              text=True)
    assert packaged.returncode == 0, packaged.stderr[-3000:]
    assert "then open http://127.0.0.1:5000/#/models/demo-ensemble/versions/1" in packaged.stdout  # its page

    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("synthetic-cnmc")
    members = client.search_runs([experiment.experiment_id], "tags.stage = 'train'")
    validation = sorted(run.data.metrics["val/f1_weighted_best"] for run in members)
    assert len(members) == 4 and validation[0] < validation[-1]  # the members differ
    (ensemble,) = client.search_runs([experiment.experiment_id], "tags.stage = 'ensemble'")
    table = pd.read_csv(client.download_artifacts(ensemble.info.run_id, "comparison/comparison.csv", str(tmp_path)))
    ranked = table.dropna(subset=["rank"])["cv_f1_weighted"]
    assert ranked.nunique() >= 3 and ranked.max() - ranked.min() >= 0.02, ranked.tolist()  # not a table of ties
    assert int(members[0].data.params["n_val"]) >= 100  # validated on more than a handful of cells
    version = client.get_model_version_by_alias("demo-ensemble", "champion")  # the demo ends with a registered model
    assert version.tags["run_id"] == ensemble.info.run_id
