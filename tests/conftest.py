"""Shared fixtures: composed configs of the real conf/, synthetic datasets on disk, an MLflow store.
The helpers they use are in helpers.py."""

from __future__ import annotations

import contextlib
import io
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from allcls.data.synthetic import SyntheticSpec, materialise
from allcls.machine import usable_cores

from helpers import compose_config, compose_train

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # The suite's workers (make test: pytest-xdist) share the machine's cores: each takes its share
    # for torch's threads, and so do the processes its tests start (they inherit the variable).
    _share = max(1, usable_cores() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))
    torch.set_num_threads(_share)


def pytest_collection_modifyitems(items):
    """The long end-to-end tests first (the demo's first of all): spread over the workers from the
    start, they do not leave one worker finishing them while the others wait. The tests that read
    the session's store (below) go to one worker (`--dist loadgroup`), which builds it once."""
    items.sort(key=lambda item: (item.path.name != "test_demo.py", item.get_closest_marker("slow") is None))
    for item in items:
        if "store" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("store"))


@pytest.fixture
def train_cfg(tmp_path):
    """Compose with overrides: train_cfg('backbone=mobilenetv2', ...). Each call is a job of its
    own, as each launch of train.py is, with its own folder: tmp_path/output, then output-2, ..."""
    calls = itertools.count(1)

    def compose(*overrides, fast=True):
        number = next(calls)
        return compose_train(tmp_path, overrides, fast, tmp_path / ("output" if number == 1 else f"output-{number}"))
    return compose


class Pass(NamedTuple):
    """One forward pass of the network."""

    training: bool
    images: torch.Tensor  # its input batch
    logits: torch.Tensor
    autocast: bool  # under the CPU's autocast


class Loss(NamedTuple):
    """One computation of the loss."""

    training: bool
    targets: torch.Tensor  # class indices, or one probability per class (mixup's soft labels)


@dataclass
class Inside:
    trainer: Any = None  # the last train() call's Trainer, as fit left it
    passes: list[Pass] = field(default_factory=list)
    losses: list[Loss] = field(default_factory=list)


@pytest.fixture
def inside_training(monkeypatch) -> Inside:
    """What the train() calls of a test do inside, seen through hooks on the model they fit: each
    forward pass of its network, each loss it computes (training, or validation and sanity checks),
    and the Trainer after fit."""
    from allcls.training import task

    seen, fit = Inside(), task.fit

    def watched(cfg, model, *args, **kwargs):
        model.model.register_forward_hook(lambda network, inputs, logits: seen.passes.append(
            Pass(network.training, inputs[0].detach(), logits.detach(), torch.is_autocast_enabled("cpu"))))
        model.criterion.register_forward_hook(lambda loss, inputs, _: seen.losses.append(
            Loss(loss.training, inputs[1].detach())))
        seen.trainer = fit(cfg, model, *args, **kwargs)
        return seen.trainer

    monkeypatch.setattr(task, "fit", watched)
    return seen


@pytest.fixture
def mlflow_client(tmp_path) -> MlflowClient:
    """The client of the store that a config composed in tmp_path writes to."""
    return MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")


@pytest.fixture(autouse=True)
def _no_tracking_uri_from_environment(monkeypatch):
    """Tests decide where MLflow writes; a user's $MLFLOW_TRACKING_URI must not leak in, nor one
    test's store into the next: mlflow.set_tracking_uri (which Lightning's MLFlowLogger, the
    packaging and the page call) also exports $MLFLOW_TRACKING_URI, and a later config would
    compose with it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    mlflow.set_tracking_uri(None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def cnmc_root(tmp_path_factory) -> Path:
    """A synthetic dataset in the original C-NMC layout (32 px)."""
    return materialise(SyntheticSpec(layout="cnmc", image_size=32), tmp_path_factory.mktemp("cnmc"))


@pytest.fixture(scope="session")
def aria_root(tmp_path_factory) -> Path:
    """A synthetic dataset in the original 4-class ALL image dataset layout (32 px)."""
    return materialise(SyntheticSpec(layout="aria", image_size=32, cells_per_subject=6),
                       tmp_path_factory.mktemp("aria"))


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    """A project folder whose MLflow store holds three comparable training runs (jobs of the sweep
    'multirun'), trained after one run on another split of the same synthetic data."""
    from allcls.training.task import train

    root = tmp_path_factory.mktemp("store")
    other_split = ["dataset.split.hints.fold_1=val", "dataset.split.hints.fold_2=train"]
    train(compose_train(root, other_split, output_dir=root / "odd" / "output_other_split"))
    for seed in (0, 1, 2):
        train(compose_train(root, [f"seed={seed}", "trainer.max_epochs=2"], output_dir=root / "multirun" / str(seed),
                            sweep_job=seed))
    client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("synthetic-cnmc")
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'train'",
                              order_by=["attributes.start_time ASC"])
    odd, members = runs[0], runs[1:]
    assert odd.data.tags["split_hash"] != members[0].data.tags["split_hash"]
    return {"root": root, "client": client, "experiment_id": experiment.experiment_id,
            "members": [r.info.run_id for r in members], "odd": odd.info.run_id,
            "split_hash": members[0].data.tags["split_hash"]}


@pytest.fixture(scope="session")
def ensemble_run(store, tmp_path_factory) -> str:
    """The id of an ensemble of the store's sweep (every scheme but the simplex grid, 50 replicates)."""
    from allcls.ensemble.task import run_ensemble

    overrides = ["experiment_name=synthetic-cnmc", "sweep_id=multirun", "bootstrap=50", "~schemes.simplex_grid"]
    run_ensemble(compose_config("ensemble", store["root"], overrides, output_dir=tmp_path_factory.mktemp("ensemble")))
    runs = store["client"].search_runs([store["experiment_id"]], "tags.stage = 'ensemble'",
                                       order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id


@pytest.fixture(scope="session")
def registered(store, ensemble_run, tmp_path_factory) -> dict[str, str]:
    """Packaged models, each with 70% class-conditional prediction sets (the most three validation
    subjects per class support) and an out-of-distribution gate: `cells`, the sweep's first run,
    registered as cells@champion; `ensemble`, the store's ensemble, which also protects `all` (miss
    rate 30%), registered as ensemble@champion, the newest registered model, then packaged again
    (`unregistered`: overwrite=true, without the gate, not registered, asking a coverage and a miss
    rate that its 3 validation subjects per class cannot support; `printed`: what packaging said),
    which leaves the registered version as it was."""
    from allcls.serving.package import package

    folder = tmp_path_factory.mktemp("registered")

    def packaged(*overrides: str) -> str:
        return package(compose_config("package", store["root"], ["coverage=0.7", "bootstrap=50", *overrides],
                                      output_dir=folder / "job"))

    cells = packaged(f"run_id={store['members'][0]}", "register_as=cells", "alias=champion")
    protect = ["referral.protect=all", "referral.max_miss_rate=0.3", "ood.probes=false"]  # cells' card has them
    ensemble = packaged(f"run_id={ensemble_run}", "register_as=ensemble", "alias=champion", *protect)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # the gate is tested on the other two: not fitted here
        unregistered = packaged(f"run_id={ensemble_run}", "overwrite=true", *protect, "ood.enabled=false",
                                "coverage=0.95", "referral.max_miss_rate=0.05")
    return {"cells": cells, "ensemble": ensemble, "unregistered": unregistered, "printed": printed.getvalue(),
            "ensemble_run": ensemble_run}
