"""Helpers the tests share: the real configs composed as the entry scripts would compose them,
the entry scripts run as a user runs them, and what an MLflow run holds."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, open_dict

from allcls.config.entry import CONF_DIR, prepare_process
from allcls.jobs import optuna_study

PROJECT = Path(__file__).resolve().parents[1]
prepare_process(optuna_study.RESOLVERS)  # as the entry points do: environment defaults and conf/'s resolvers

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


# The small, easy synthetic dataset the tests train on (the default is the demo's: larger and harder).
SMALL_SYNTHETIC = [
    "dataset.reader.image_size=32",
    "dataset.reader.subjects_per_class=9",
    "dataset.reader.cells_per_subject=8",
    "dataset.reader.test_subjects_per_class=3",
    "dataset.reader.separation=1.0",
]


def compose_train(tmp_path: Path, overrides=(), fast: bool = True, output_dir: Path | None = None,
                  sweep_job: int | None = None) -> DictConfig:
    """conf/train.yaml composed as `python train.py <overrides>` would, writing under tmp_path."""
    fast_overrides = list(FAST) if fast else []
    if fast and not any(o.startswith("dataset=") and o != "dataset=synthetic" for o in overrides):
        fast_overrides += SMALL_SYNTHETIC
    return compose_config("train", tmp_path, [*fast_overrides, *overrides], output_dir, sweep_job)


def console_script(name: str) -> str:
    """The path of an installed console script (allcls-runs, ...) of this environment."""
    return str(Path(sys.executable).parent / name)


def run_entry(main, *args: str, cwd: Path, monkeypatch, capsys, program: str = "train.py",
              env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """An entry point's `main` (allcls.training.cli.main, ...) run in this process as `program *args`
    from `cwd`: for what needs no process of its own (a refusal before any work), seconds faster than
    a subprocess. Hydra's global state and the root logger are put back afterwards."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", [program, *args])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name, value in (env_extra or {}).items():
        monkeypatch.setenv(name, value)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    GlobalHydra.instance().clear()
    code = 0
    try:
        main()
    except SystemExit as stopped:
        code = stopped.code if isinstance(stopped.code, int) else 1
    finally:
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:], root.level = handlers, level
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess([program, *args], code, out, err)


def run_script(*args: str, cwd: Path, timeout: int = 600, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """Run one of the entry scripts (train.py ...) as a user would, from `cwd`."""
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONUNBUFFERED="1", **(env_extra or {}))
    return subprocess.run([sys.executable, str(PROJECT / args[0]), *args[1:]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    """Every artifact file of a run, by its path in the run."""
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str) -> None:
    """Raises OSError unless `url` answers: an HTTP address, or tcp://host:port that takes a connection."""
    if url.startswith("tcp://"):
        host, port = url.removeprefix("tcp://").rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=2).close()
    else:
        urllib.request.urlopen(url, timeout=2)


@contextmanager
def served(command: list[str], ready_url: str, log: Path, timeout: float = 180, **popen) -> Iterator[None]:
    """A server (`command`) started in its own process group, waited for until `ready_url` answers
    (see `answers`), and stopped by PID (the whole group: SIGTERM, then SIGKILL) whatever the block does."""
    with open(log, "w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True, **popen)
        try:
            deadline = time.time() + timeout
            while True:
                try:
                    answers(ready_url)
                    break
                except OSError:
                    if server.poll() is not None or time.time() > deadline:
                        raise RuntimeError(f"{' '.join(command[:4])} did not start:\n{log.read_text()}") from None
                    time.sleep(0.5)
            yield
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
                try:
                    server.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, signal.SIGKILL)
                    server.wait()


@pytest.fixture(autouse=True)
def models_uris_read_the_store(store):
    """For a test module that imports it: `models:/` and `runs:/` URIs are looked up in MLflow's
    global store, here the session's store (reset after every test)."""
    mlflow.set_tracking_uri(f"sqlite:///{store['root']}/mlruns/mlflow.db")


def sample_images(store, count: int = 3) -> list[str]:
    """The first `count` cells of the session store's synthetic C-NMC preliminary-test folder."""
    folder = next(Path(store["root"], "data", "synthetic").glob("cnmc-*"))
    return sorted(str(p) for p in (folder / "validation_data" / "C-NMC_test_prelim_phase_data").glob("*.bmp"))[:count]
