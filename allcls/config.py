"""Config helpers: OmegaConf resolvers, typed config sections, dict groups into lists, and what
Hydra knows of the job."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, TypeVar

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from allcls.errors import AllclsError
from allcls.metrics.names import mode

T = TypeVar("T")

RESOLVERS = {
    # `${gt:a,b}`: a > b, for settings that depend on another number (see conf/trainer/ddp.yaml)
    "gt": lambda a, b: float(a) > float(b),
    # `${on_gpu:${trainer.accelerator}}`: whether a setting's GPU default applies (model.channels_last)
    "on_gpu": lambda accelerator: str(accelerator) in ("gpu", "cuda"),
    # `${mode_of:val/loss}` -> min: which way a metric is better, decided once (allcls.metrics.names)
    "mode_of": mode,
    # `${optuna_direction:max}` -> maximize: Optuna's word for a monitor mode
    "optuna_direction": lambda monitor_mode: {"max": "maximize", "min": "minimize"}.get(monitor_mode, monitor_mode),
    # `${optuna_trials_left:20,sqlite:///optuna.db,name}`: the trials a stored search still needs
    "optuna_trials_left": lambda total, storage, study: _optuna_study().trials_left(total, storage, study),
    # `${optuna_sampler_seed:1234,sqlite:///optuna.db,name}`: a seed that moves on as the search goes
    "optuna_sampler_seed": lambda seed, storage, study: _optuna_study().sampler_seed(seed, storage, study),
}


def _optuna_study():
    from allcls import optuna_study  # imports optuna: only when a search starts

    return optuna_study


def register_resolvers() -> None:
    for name, resolver in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


register_resolvers()


def typed(cls: type[T], values: Mapping[str, Any] | None, where: str) -> T:
    """A config section as the dataclass that describes it: its defaults live in the dataclass, and a
    misspelt key fails here, naming the key, the closest known one and the section's keys."""
    if isinstance(values, DictConfig):
        values = OmegaConf.to_container(values, resolve=True)
    values = dict(values or {})
    known = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            suggestion = f" (did you mean {where}.{close[0]}?)" if close else ""
            raise AllclsError(f"{where}.{key} is not a setting{suggestion}: {where} takes {known}.")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise AllclsError(f"{where} needs {missing}: set {where}.{missing[0]}=...")
    return cls(**values)


def build(node, /, **kwargs):
    """hydra.utils.instantiate, except that a user error raised while building (a bad value in the
    config) comes out as itself rather than wrapped in Hydra's InstantiationException."""
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, AllclsError):
            raise error.__cause__ from None
        raise


def instantiate_dict(group: DictConfig | None) -> list:
    """A dict of `_target_` configs (callbacks) -> list of objects; a null entry switches one off."""
    if not group:
        return []
    return [build(node) for node in group.values() if node is not None and "_target_" in node]


@dataclass(frozen=True)
class JobInfo:
    """Where this job sits: its sweep (shared by all jobs of one `-m` launch), number, overrides."""

    sweep_id: str
    name: str = "train"  # Hydra's job name: its log file is <output_dir>/<name>.log
    job_num: int | None = None
    overrides: list[str] = field(default_factory=list)
    choices: dict[str, str] = field(default_factory=dict)


def sweep_id(output_dir: str = "") -> str:
    """The sweep folder (relative to the launch folder when inside it): all jobs of one `-m` launch
    share it, and a single run is a sweep of one, named after its own folder. Outside Hydra (the
    task called from Python) it is the name of `output_dir`."""
    if not HydraConfig.initialized():
        return Path(output_dir).name
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    folder = Path(hydra_cfg.sweep.dir if multirun else hydra_cfg.runtime.output_dir).absolute()
    try:
        return folder.relative_to(Path(hydra_cfg.runtime.cwd).absolute()).as_posix()
    except ValueError:
        return folder.as_posix()


def job_info(output_dir: str = "") -> JobInfo:
    """What Hydra knows of the running job (see `sweep_id` for the sweep id)."""
    if not HydraConfig.initialized():
        return JobInfo(sweep_id=sweep_id(output_dir))
    hydra_cfg = HydraConfig.get()
    choices = {k: str(v) for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra") and v is not None}
    return JobInfo(sweep_id=sweep_id(), name=hydra_cfg.job.name,
                   job_num=hydra_cfg.job.num if hydra_cfg.mode == RunMode.MULTIRUN else None,
                   overrides=list(hydra_cfg.overrides.task), choices=choices)


def resolved_yaml(cfg: DictConfig) -> str:
    """The job's config with every interpolation resolved (Hydra's own settings left out)."""
    return OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"]), resolve=True)
