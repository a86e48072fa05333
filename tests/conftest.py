"""Shared fixtures: composed configs of the real conf/, synthetic datasets on disk, an MLflow store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, open_dict

import allcls  # noqa: F401  (sets NO_ALBUMENTATIONS_UPDATE before albumentations loads)
import allcls.config  # noqa: F401  (registers the config resolvers)
from allcls.data.synthetic import SyntheticSpec, materialise

PROJECT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT / "conf"

# Tiny and quick: 32 px images, the small custom CNN, one epoch, no loader processes.
FAST = [
    "backbone=custom_cnn",
    "backbone.input_size=32",
    "data.num_workers=0",
    "data.batch_size=16",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


def compose_config(name: str, root: Path, overrides=(), output_dir: Path | None = None,
                   sweep_job: int | None = None) -> DictConfig:
    """conf/<name>.yaml composed as `python <name>.py <overrides>` would, launched from `root`;
    with `sweep_job`, as job number `sweep_job` of a `-m` sweep in root/multirun."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.cwd = str(root)
        cfg.hydra.runtime.output_dir = str(output_dir or root / "output")
        cfg.hydra.job.name = name
        if sweep_job is not None:
            cfg.hydra.mode = RunMode.MULTIRUN
            cfg.hydra.sweep.dir = str(root / "multirun")
            cfg.hydra.job.num = sweep_job
    HydraConfig.instance().set_config(cfg)
    return cfg


def compose_train(tmp_path: Path, overrides=(), fast: bool = True, output_dir: Path | None = None,
                  sweep_job: int | None = None) -> DictConfig:
    """conf/train.yaml composed as `python train.py <overrides>` would, writing under tmp_path."""
    fast_overrides = list(FAST) if fast else []
    if fast and not any(o.startswith("dataset=") and o != "dataset=synthetic" for o in overrides):
        fast_overrides.append("dataset.reader.image_size=32")
    return compose_config("train", tmp_path, [*fast_overrides, *overrides], output_dir, sweep_job)


@pytest.fixture
def train_cfg(tmp_path):
    """Compose with overrides: train_cfg('backbone=mobilenetv2', ...)."""
    return lambda *overrides, fast=True: compose_train(tmp_path, overrides, fast)


@pytest.fixture
def mlflow_client(tmp_path) -> MlflowClient:
    """The client of the store that a config composed in tmp_path writes to."""
    return MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")


@pytest.fixture(autouse=True)
def _no_tracking_uri_from_environment(monkeypatch):
    """Tests decide where MLflow writes; a user's $MLFLOW_TRACKING_URI must not leak in."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="session")
def cnmc_root(tmp_path_factory) -> Path:
    """A synthetic dataset in the original C-NMC layout (32 px)."""
    return materialise(SyntheticSpec(layout="cnmc", image_size=32), tmp_path_factory.mktemp("cnmc"))


@pytest.fixture(scope="session")
def aria_root(tmp_path_factory) -> Path:
    """A synthetic dataset in the original 4-class ALL image dataset layout (32 px)."""
    return materialise(SyntheticSpec(layout="aria", image_size=32, cells_per_subject=6),
                       tmp_path_factory.mktemp("aria"))


def run_script(*args: str, cwd: Path, timeout: int = 600, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """Run one of the entry scripts (train.py ...) as a user would, from `cwd`."""
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONUNBUFFERED="1", **(env_extra or {}))
    return subprocess.run([sys.executable, str(PROJECT / args[0]), *args[1:]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    """A project folder whose MLflow store holds three comparable training runs (jobs of the sweep
    'multirun'), trained after one run on another split of the same synthetic data."""
    from allcls.training import train

    root = tmp_path_factory.mktemp("store")
    other_split = ["dataset.split.hints.fold_1=val", "dataset.split.hints.fold_2=train"]
    train(compose_train(root, other_split, output_dir=root / "odd" / "output_other_split"))
    for seed in (0, 1, 2):
        train(compose_train(root, [f"seed={seed}", "trainer.max_epochs=2"], output_dir=root / "multirun" / str(seed),
                            sweep_job=seed))
    client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("synthetic-cnmc")
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'train'", order_by=["attributes.start_time ASC"])
    odd, members = runs[0], runs[1:]
    assert odd.data.tags["split_hash"] != members[0].data.tags["split_hash"]
    return {"root": root, "client": client, "experiment_id": experiment.experiment_id,
            "members": [r.info.run_id for r in members], "odd": odd.info.run_id,
            "split_hash": members[0].data.tags["split_hash"]}
