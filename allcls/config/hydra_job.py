"""What Hydra knows of the running job: its sweep, its number in it, its overrides and choices, and
its config as resolved YAML."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf


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
    return OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, [str(key) for key in cfg if key != "hydra"]), resolve=True)


def launch_command(overrides: list[str], multirun: bool = False) -> str:
    """The command that started this process, as the user typed it: `python train.py -m ...` for a
    root script, `allcls-train -m ...` for a console script."""
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "allcls"
    program = f"python {program}" if program.endswith(".py") else program
    return " ".join([program, *(["-m"] if multirun else []), *overrides])
