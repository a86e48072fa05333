"""The OmegaConf resolvers that conf/ uses. The entry points register them before Hydra composes
(`allcls.config.entry`); importing this module changes nothing."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import OmegaConf

from allcls.config.stage import default_artifact_location, default_tracking_uri
from allcls.metrics.names import mode

RESOLVERS: dict[str, Callable[..., Any]] = {
    # `${tracking_uri:${paths.root}}`: $MLFLOW_TRACKING_URI, else <root>/mlruns/mlflow.db (allcls.config.stage)
    "tracking_uri": default_tracking_uri,
    # `${artifact_location:${paths.root}}`: <root>/mlruns/artifacts, for new experiments of that store
    "artifact_location": default_artifact_location,
    # `${gt:a,b}`: a > b, for settings that depend on another number (see conf/trainer/ddp.yaml)
    "gt": lambda a, b: float(a) > float(b),
    # `${on_gpu:${trainer.accelerator}}`: whether a setting's GPU default applies (model.channels_last)
    "on_gpu": lambda accelerator: str(accelerator) in ("gpu", "cuda"),
    # `${mode_of:val/loss}` -> min: which way a metric is better, decided once (allcls.metrics.names)
    "mode_of": mode,
    # `${optuna_direction:max}` -> maximize: Optuna's word for a monitor mode
    "optuna_direction": lambda monitor_mode: {"max": "maximize", "min": "minimize"}.get(monitor_mode, monitor_mode),
}


def register_resolvers(extra: Mapping[str, Callable[..., Any]] | None = None) -> None:
    """Make conf/'s resolvers known to OmegaConf, with an entry point's `extra` ones (the training
    entry's Optuna resolvers, allcls.jobs.optuna_study); registering again is a no-op."""
    for name, resolver in {**RESOLVERS, **(extra or {})}.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
