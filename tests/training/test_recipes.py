"""The studies' recipes (conf/experiment/) never rot: each runs as the sweep its header documents
(through the entry point, in this process), for a few steps, on synthetic data written in its
dataset's layout. Big backbones are replaced by a tiny stand-in through the one documented
override, `debug=tiny` (custom_cnn at 32 px in place of every backbone); everything else is the
recipe's own. A recipe that ensembles goes on to run the ensemble command written in its header."""

import re
import shlex

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from allcls.data.synthetic import SyntheticSpec, materialise
from allcls.ensemble.cli import main as ensemble_main
from allcls.training.cli import main as train_main

from helpers import CONF_DIR, SMALL_SYNTHETIC, compose_train, run_entry

RECIPES = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
# quickstart's sweep runs in full, real backbones and all, as `make demo` (tests/test_demo.py).
RUN_HERE = [recipe for recipe in RECIPES if recipe != "quickstart"]
# The recipes whose header also compares ensembles: their test runs that step too, so a header that
# loses or garbles the command must fail here rather than skip it.
ENSEMBLED = {"mondal2021"}
PAPERS_FOUR = {"proportional:accuracy", "proportional:f1_weighted", "proportional:auroc", "proportional:kappa"}


def header_commands(recipe: str, script: str) -> list[list[str]]:
    """The `python <script> ...` commands written in a recipe's header comment."""
    text = (CONF_DIR / "experiment" / f"{recipe}.yaml").read_text()
    return [shlex.split(m.group(1)) for m in re.finditer(rf"^#\s+python {script} (.+)$", text, re.MULTILINE)]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, str]:
    """dataset.root of synthetic data in each real dataset's original layout."""
    root = tmp_path_factory.mktemp("layouts")
    return {"cnmc": str(materialise(SyntheticSpec(layout="cnmc", image_size=32), root)),
            "aria": str(materialise(SyntheticSpec(layout="aria", image_size=32, cells_per_subject=6), root))}


def test_every_recipe_documents_its_command():
    for recipe in RECIPES:
        (train,) = header_commands(recipe, "train.py")
        assert train[:2] == ["-m", f"experiment={recipe}"], recipe
        assert len(header_commands(recipe, "ensemble.py")) == (recipe in ENSEMBLED), recipe


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RUN_HERE)
def test_each_recipe_runs_its_sweep_on_data_in_its_layout(recipe, tmp_path, layouts, monkeypatch, capsys):
    cfg = compose_train(tmp_path, [f"experiment={recipe}"], fast=False)
    dataset = cfg.dataset.name
    data = [f"dataset.root={layouts[dataset]}"] if dataset in layouts else SMALL_SYNTHETIC
    jobs = str(cfg.hydra.sweeper.params.backbone).split(",") if cfg.hydra.sweeper.get("params") else [None]

    result = run_entry(train_main, "-m", f"experiment={recipe}", "debug=tiny", *data, cwd=tmp_path,
                       monkeypatch=monkeypatch, capsys=capsys)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name(cfg.experiment_name)
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'train'")
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * len(jobs)
    assert {r.data.tags["backbone"] for r in runs} == {"custom_cnn"}  # the stand-in, as documented
    if jobs != [None]:  # each job is named after the recipe's own backbone
        assert {r.info.run_name.split("-")[0] for r in runs} == set(jobs)

    for command in header_commands(recipe, "ensemble.py"):
        compared = run_entry(ensemble_main, *command, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys,
                             program="ensemble.py")
        assert compared.returncode == 0, compared.stderr[-3000:]
        (ensemble,) = client.search_runs([experiment.experiment_id], "tags.stage = 'ensemble'")
        table = pd.read_csv(client.download_artifacts(ensemble.info.run_id, "comparison/comparison.csv",
                                                      str(tmp_path / "comparison")))
        if recipe == "mondal2021":
            assert set(table["scheme"]) >= PAPERS_FOUR
