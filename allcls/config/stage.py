"""What the settings of every stage share: the job as Hydra launched it (its folder, what Hydra knows
of it, its resolved config) and the MLflow store it tracks into, with the one rule for the default
store. Each task's own settings (allcls.<task>.settings) are built from its composed config by
`settings_of`, at its entry point; nothing below an entry point reads the config itself."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from allcls.config.hydra_job import JobInfo, job_info, resolved_yaml
from allcls.config.sections import Dataclass, plain, typed
from allcls.errors import AllclsError

T = TypeVar("T", bound=Dataclass)


def default_tracking_uri(folder: str | Path | None = None) -> str:
    """$MLFLOW_TRACKING_URI when set, else the SQLite store in <folder>/mlruns/ (default: the folder
    the command runs in). conf/logger/mlflow.yaml asks for it through the `tracking_uri` resolver."""
    local = Path(folder or Path.cwd()).absolute() / "mlruns" / "mlflow.db"
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{local}"


def default_artifact_location(folder: str | Path | None = None) -> str:
    """Where a new experiment of the default local store keeps its artifacts: beside the database."""
    return str(Path(folder or Path.cwd()).absolute() / "mlruns" / "artifacts")


@dataclass(frozen=True)
class Store:
    """`logger`: the MLflow store (conf/logger/)."""

    tracking_uri: str
    artifact_location: str | None = None  # for new experiments of a local store; a server decides itself


@dataclass(frozen=True)
class Job:
    """A job as launched: its folder, what Hydra knows of it, and its resolved config (its run
    keeps it as config/config.yaml)."""

    output_dir: Path
    info: JobInfo
    config_yaml: str

    @classmethod
    def of(cls, cfg: DictConfig) -> Job:
        return cls(Path(cfg.paths.output_dir), job_info(cfg.paths.output_dir), resolved_yaml(cfg))


def settings_of(cls: type[T], cfg: DictConfig, **built: Any) -> T:
    """A task's settings from its composed config: each top-level key read by `typed` (Hydra's own
    section and `defaults` aside), `paths` and `logger` as the shared `job` and `store`, and `built`:
    fields the entry point has made itself."""
    own = OmegaConf.masked_copy(cfg, [str(key) for key in cfg if key != "hydra"])  # Hydra's section resolves in Hydra
    unset = sorted(OmegaConf.missing_keys(own))
    if unset:
        raise AllclsError(f"{unset[0]} is not set: pass {unset[0]}=... on the command line.")
    container = plain(own)
    values = {key: value for key, value in container.items() if key not in ("paths", "logger", *built)}
    return typed(cls, {**values, "job": Job.of(cfg), "store": typed(Store, container.get("logger"), "logger"),
                       **built}, "")
