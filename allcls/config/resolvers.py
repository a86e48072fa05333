"""The OmegaConf resolvers that conf/ uses. The entry points register them before Hydra composes
(`allcls.config.entry`); importing this module changes nothing."""

from __future__ import annotations

from typing import Any, Callable

from omegaconf import OmegaConf

from allcls.metrics.names import mode


def _optuna_trials_left(total, storage, study) -> int:
    from allcls.jobs import optuna_study  # imports optuna: only when a search asks

    return optuna_study.trials_left(total, storage, study)


def _optuna_sampler_seed(seed, storage, study) -> int:
    from allcls.jobs import optuna_study

    return optuna_study.sampler_seed(seed, storage, study)


RESOLVERS: dict[str, Callable[..., Any]] = {
    # `${gt:a,b}`: a > b, for settings that depend on another number (see conf/trainer/ddp.yaml)
    "gt": lambda a, b: float(a) > float(b),
    # `${on_gpu:${trainer.accelerator}}`: whether a setting's GPU default applies (model.channels_last)
    "on_gpu": lambda accelerator: str(accelerator) in ("gpu", "cuda"),
    # `${mode_of:val/loss}` -> min: which way a metric is better, decided once (allcls.metrics.names)
    "mode_of": mode,
    # `${optuna_direction:max}` -> maximize: Optuna's word for a monitor mode
    "optuna_direction": lambda monitor_mode: {"max": "maximize", "min": "minimize"}.get(monitor_mode, monitor_mode),
    # `${optuna_trials_left:20,sqlite:///optuna.db,name}`: the trials a stored search still needs
    "optuna_trials_left": _optuna_trials_left,
    # `${optuna_sampler_seed:1234,sqlite:///optuna.db,name}`: a seed that moves on as the search goes
    "optuna_sampler_seed": _optuna_sampler_seed,
}


def register_resolvers() -> None:
    """Make conf/'s resolvers known to OmegaConf (again is a no-op)."""
    for name, resolver in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
