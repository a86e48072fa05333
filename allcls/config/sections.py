"""Config sections as the frozen dataclasses that describe them, and objects built from `_target_`
nodes with one user error for a bad value."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping, TypeVar

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from allcls.errors import AllclsError

T = TypeVar("T")


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
