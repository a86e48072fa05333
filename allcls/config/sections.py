"""Config sections as the frozen dataclasses that describe them, and objects built from `_target_`
nodes with one user error for a bad value."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Protocol, TypeVar

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from allcls.data.preparation import DatasetSpec, ImageChecks
from allcls.data.splits import SplitSpec
from allcls.errors import AllclsError


class Dataclass(Protocol):
    """Any dataclass (what `dataclasses.fields` takes)."""

    __dataclass_fields__: ClassVar[dict[str, Any]]


T = TypeVar("T", bound=Dataclass)


def plain(section: DictConfig) -> dict[str, Any]:
    """A config section as plain values (dicts, lists, scalars), every interpolation resolved."""
    values = OmegaConf.to_container(section, resolve=True)
    assert isinstance(values, dict)  # the container of a DictConfig is a dict
    return {str(key): value for key, value in values.items()}


def typed(cls: type[T], values: Mapping[str, Any] | None, where: str) -> T:
    """A config section as the frozen dataclass that describes it: its defaults live in the
    dataclass; a misspelt key fails here, naming the key, the closest known one and the section's
    keys; an option outside a `Literal` field's choices fails naming them; a field whose type is
    itself such a dataclass is read the same way (its keys named `<where>.<field>.<key>`)."""
    if isinstance(values, DictConfig):
        values = plain(values)
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{where}." if where else ""
    for key in values:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            suggestion = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise AllclsError(f"{prefix}{key} is not a setting{suggestion}: {where or 'the config'} takes "
                              f"{list(fields)}.")
    missing = [name for name, f in fields.items() if name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise AllclsError(f"{where or 'the config'} needs {missing}: set {prefix}{missing[0]}=...")
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        values[name] = _field_value(hints[name], value, f"{prefix}{name}")
    return cls(**values)


def _field_value(hint: Any, value: Any, where: str) -> Any:
    """`value` as the field typed `hint` takes it: a nested section built, an option checked."""
    options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    section = next((arg for arg in [hint, *options] if isinstance(arg, type) and dataclasses.is_dataclass(arg)), None)
    if section is not None and isinstance(value, Mapping):
        return typed(section, value, where)
    literal = next((arg for arg in [hint, *options] if typing.get_origin(arg) is Literal), None)
    if literal is not None and value is not None and value not in typing.get_args(literal):
        raise AllclsError(f"{where}={value!r} is not one of {list(typing.get_args(literal))}.")
    if typing.get_origin(hint) is tuple and isinstance(value, list):
        return tuple(value)
    return value


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


def dataset_spec(section: Mapping[str, Any], root: str | None = None, split: bool | SplitSpec = True) -> DatasetSpec:
    """A `dataset` section (conf/dataset/, or the one a run recorded) as a DatasetSpec: its reader
    built (reading `root` where given), its checks, and its split: the section's own (True), the one
    given, or none (False: every image is evaluated)."""
    if isinstance(section, DictConfig):
        section = plain(section)
    reader = dict(section["reader"])
    if root is not None:
        reader["root"] = root
    if split is True:
        split = typed(SplitSpec, section.get("split"), "dataset.split")
    return DatasetSpec(section["name"], build(reader), bool(section.get("roi_crop", False)), ImageChecks.of(section),
                       split or None)
