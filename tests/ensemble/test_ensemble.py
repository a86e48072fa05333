"""ensemble.py against real MLflow runs from short trainings on synthetic data."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from allcls.ensemble.cli import main as ensemble_main
from allcls.ensemble.task import run_ensemble
from allcls.errors import AllclsError
from allcls.predictions import read_table

from helpers import compose_config, run_entry


def ensemble_cfg(store, tmp_path, *overrides):
    """ensemble.py's config over the store's experiment (unless the overrides name another)."""
    experiment = [] if any(o.startswith("experiment_name=") for o in overrides) else ["experiment_name=synthetic-cnmc"]
    return compose_config("ensemble", store["root"], ["bootstrap=100", *experiment, *overrides],
                          output_dir=tmp_path / "out")


def ensemble_runs(store):
    return store["client"].search_runs([store["experiment_id"]], "tags.stage = 'ensemble'")


def test_ensemble_of_a_sweep_logs_the_comparison_and_a_child_run_per_scheme(store, tmp_path, capsys):
    before = len(ensemble_runs(store))
    score = run_ensemble(ensemble_cfg(store, tmp_path, "sweep_id=multirun"))
    runs = ensemble_runs(store)
    assert len(runs) == before + 1
    parent = max(runs, key=lambda r: r.info.start_time)
    client = store["client"]
    tags, params, metrics = parent.data.tags, parent.data.params, parent.data.metrics
    assert parent.info.status == "FINISHED"
    assert sorted(tags["member_run_ids"].split(",")) == sorted(store["members"])
    assert tags["split_hash"] == store["split_hash"] and tags["classes"] == "hem,all"
    weights = [float(v) for k, v in params.items() if k.startswith("weight/")]
    assert len(weights) == 3 and sum(weights) == pytest.approx(1, abs=1e-3)
    assert metrics["cv/f1_weighted"] == pytest.approx(score)
    assert metrics["cv/f1_weighted_ci_low"] <= score <= metrics["cv/f1_weighted_ci_high"]
    assert metrics["nested_cv/f1_weighted_ci_low"] <= metrics["nested_cv/f1_weighted"] \
        <= metrics["nested_cv/f1_weighted_ci_high"]
    for name in ("test/f1_weighted", "test/balanced_accuracy", "test/auroc", "test/kappa", "val/f1_weighted",
                 "best_single/test/f1_weighted"):
        assert name in metrics, name

    local = Path(client.download_artifacts(parent.info.run_id, "", str(tmp_path / "download")))
    for name in ("comparison.csv", "comparison.md", "comparison.html", "scores.png", "weights.png"):
        assert (local / "comparison" / name).stat().st_size > 0, name
    table = pd.read_csv(local / "comparison" / "comparison.csv")
    assert table["rank"].dropna().tolist() == list(range(1, len(table)))  # ranked schemes, then the best member
    assert table["scheme"].iloc[-1].startswith("best single member")
    reported = table.dropna(subset=["test_f1_weighted"])
    (chosen,) = table[table["chosen"]].itertuples()
    assert len(reported) == 3 + 1 + (chosen.rank > 3)  # report_top schemes, the chosen and the best member, on test
    # The run is named after the scheme chosen and the rule that combines it, and its params agree.
    named = f"ensemble-{chosen.scheme}-{chosen.combine}"
    assert parent.info.run_name == named == f"ensemble-{tags['chosen_scheme']}-{params['combine']}"
    assert params["combine_setting"] == "arithmetic"
    assert chosen.tied_with_best and tags["selection_reason"].startswith(table["scheme"].iloc[0])
    assert params["selection_rule"].startswith("one standard error")
    member_val = read_table(client.download_artifacts(store["members"][0], "predictions/val.parquet",
                                                      str(tmp_path / "m")))
    ensemble_val = read_table(local / "predictions" / "val.parquet", ["hem", "all"])
    assert sorted(ensemble_val["sample_id"]) == sorted(member_val["sample_id"])
    manifest = json.loads((local / "ensemble" / "members.json").read_text())
    assert [m["weight"] for m in manifest["members"]] == pytest.approx(weights, abs=1e-3)

    children = client.search_runs([store["experiment_id"]], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == len(table) - 1
    assert all("cv/f1_weighted" in child.data.metrics for child in children)
    printed = capsys.readouterr().out
    assert "cv f1_weighted [95% CI]" in printed and "mlflow ui --backend-store-uri" in printed
    assert f"Chosen: {chosen.scheme}. Why: {tags['selection_reason']}" in printed
    assert f"Nested cross-validation (the whole choice repeated without each of 5 outer folds, scored on it): " \
           f"f1_weighted {metrics['nested_cv/f1_weighted']:.3f}" in printed


def test_latest_sweep_is_the_newest_training_sweep(store, tmp_path):
    run_ensemble(ensemble_cfg(store, tmp_path, "sweep_id=latest", "~schemes.simplex_grid", "~schemes.greedy"))
    parent = max(ensemble_runs(store), key=lambda r: r.info.start_time)
    assert sorted(parent.data.tags["member_run_ids"].split(",")) == sorted(store["members"])


def fake_run(store, tmp_path, spoil=None, tags=None):
    """A finished 'training' run whose prediction tables are a member's, spoiled by `spoil`."""
    client = store["client"]
    source = client.get_run(store["members"][0])
    run_tags = {k: source.data.tags[k] for k in ("dataset", "classes", "split_hash")}
    run = client.create_run(store["experiment_id"], tags={**run_tags, "stage": "train", **(tags or {})})
    if spoil is not None:
        for split in ("val", "test"):
            table = pd.read_parquet(client.download_artifacts(source.info.run_id, f"predictions/{split}.parquet",
                                                              str(tmp_path / run.info.run_id / "in")))
            path = tmp_path / run.info.run_id / "out" / f"{split}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            spoil(table).to_parquet(path, index=False)
            client.log_artifact(run.info.run_id, str(path), "predictions")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def with_nan(table):
    table.loc[0, "prob_all"] = np.nan
    return table


def swapped_classes(table):
    return table[["sample_id", "subject", "label", "prob_all", "prob_hem"]]


@pytest.mark.parametrize("case, message", [
    ("no_match", "No finished training runs match"),
    ("single", "Only one run matches"),
    ("other_split", "do not share one split_hash"),
    # which run has what: the member by its run name, the other run by the name MLflow gave it
    ("other_dataset", r"do not share one dataset \(dataset=synthetic-cnmc: custom_cnn-basic-s0; dataset=other-lab: "
                      r"[\w-]+\)"),
    ("other_classes", r"do not share one classes \(classes=hem,all: custom_cnn-basic-s0; classes=blast,normal: "
                      r"[\w-]+\)"),
    ("no_tables", "has no predictions/val.parquet"),
    ("nan", "NaN"),
    ("class_order", r"classes \['all', 'hem'\], expected \['hem', 'all'\]"),
    ("bad_combine", "combine='median'"),
    ("listed_twice", "run_ids lists .* more than once"),
    ("one_fold", "cv_folds=1 is out of range: it takes a whole number of at least 2"),
    ("bad_metric", "metric='log_loss' cannot rank schemes"),
    ("too_many_folds", "cv_folds=50 needs at least 50"),
    ("no_experiment", r"Say which training runs to ensemble: experiment_name=.*synthetic-cnmc"),
    ("misspelt_setting", r"schemes.greedy.bag is not a setting \(did you mean schemes.greedy.bags\?\)"),
])
def test_refusals_are_clear_and_log_nothing(store, tmp_path, case, message):
    members = store["members"]
    overrides = {
        "no_match": ["filter=\"tags.backbone = 'nope'\""],
        "single": [f"run_ids=[{members[0]}]"],
        "other_split": [f"run_ids=[{members[0]},{store['odd']}]"],
        "bad_combine": ["sweep_id=multirun", "combine=median"],
        "listed_twice": [f"run_ids=[{members[0]},{members[1]},{members[0]}]"],
        "one_fold": ["sweep_id=multirun", "cv_folds=1"],
        "bad_metric": ["sweep_id=multirun", "metric=log_loss"],
        "too_many_folds": ["sweep_id=multirun", "cv_folds=50"],
        "no_experiment": ["experiment_name=null", "sweep_id=latest"],
        "misspelt_setting": ["sweep_id=multirun", "+schemes.greedy.bag=3"],
    }.get(case)
    if overrides is None:
        spoil = {"nan": with_nan, "class_order": swapped_classes}.get(case)
        tags = {"other_dataset": {"dataset": "other-lab"}, "other_classes": {"classes": "blast,normal"}}.get(case)
        overrides = [f"run_ids=[{members[0]},{fake_run(store, tmp_path, spoil, tags)}]"]
    before = len(ensemble_runs(store))
    with pytest.raises(AllclsError, match=message):
        run_ensemble(ensemble_cfg(store, tmp_path, *overrides))
    assert len(ensemble_runs(store)) == before


def noisy(seed):
    """A spoiler giving a member's predictions with noise of its own: another plausible model."""
    def spoil(table):
        rng = np.random.default_rng(seed)
        p_all = np.clip(table["prob_all"].to_numpy() + rng.normal(0, 0.25, len(table)), 0.01, 0.99)
        return table.assign(prob_all=p_all, prob_hem=1 - p_all)
    return spoil


def test_a_sweep_of_many_runs_gets_every_scheme(store, tmp_path):
    """Ten members: the default grid (step 0.05) would have 10 million weightings; it covers the
    best 6 members, and no scheme is dropped."""
    runs = [*store["members"], *(fake_run(store, tmp_path, noisy(seed)) for seed in range(7))]
    run_ensemble(ensemble_cfg(store, tmp_path, f"run_ids=[{','.join(runs)}]", "cv_folds=3"))
    newest = max(ensemble_runs(store), key=lambda r: r.info.start_time)
    table = pd.read_csv(store["client"].download_artifacts(newest.info.run_id, "comparison/comparison.csv",
                                                           str(tmp_path / "cmp")))
    assert "simplex_grid:0.05 (best 6 of 10 by f1_weighted)" in set(table["scheme"])
    grid = table.set_index("scheme").loc["simplex_grid:0.05 (best 6 of 10 by f1_weighted)"]
    assert (grid.filter(like="weight:") > 0).sum() <= 6
    assert len(table) == 16 + 1  # every default scheme, and the best single member


def test_explicit_run_ids_ensemble_into_the_members_experiment(store, tmp_path):
    first, second = store["members"][:2]
    cfg = ensemble_cfg(store, tmp_path, "experiment_name=null", f"run_ids=[{first},{second}]", "~schemes.simplex_grid")
    run_ensemble(cfg)
    newest = ensemble_runs(store)[0]
    assert newest.info.experiment_id == store["experiment_id"]
    assert newest.data.tags["member_run_ids"] == ",".join(store["members"][:2])


@pytest.mark.slow
def test_multirun_over_ensemble_settings_gives_one_ensemble_run_each(store, monkeypatch, capsys):
    before = len(ensemble_runs(store))
    result = run_entry(ensemble_main, "-m", "experiment_name=synthetic-cnmc", "sweep_id=multirun",
                       "combine=arithmetic,geometric", "bootstrap=100", "~schemes.simplex_grid", cwd=store["root"],
                       monkeypatch=monkeypatch, capsys=capsys, program="ensemble.py")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = ensemble_runs(store)
    assert len(runs) == before + 2
    newest = sorted(runs, key=lambda r: r.info.start_time)[-2:]
    assert {r.data.params["combine_setting"] for r in newest} == {"arithmetic", "geometric"}
