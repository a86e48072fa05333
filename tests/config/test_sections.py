"""Config sections read into the frozen dataclasses that describe them: defaults from the dataclass,
a misspelt key named with the one meant, an option outside its choices refused where it enters,
nested sections read the same way."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from allcls.config.sections import typed
from allcls.errors import AllclsError


@dataclass(frozen=True)
class Inner:
    mode: Literal["fast", "exact"] = "fast"
    sizes: tuple[int, ...] = ()


@dataclass(frozen=True)
class Outer:
    name: str
    inner: Inner = field(default_factory=Inner)
    limit: int | None = None


def test_a_section_is_read_with_its_defaults_and_its_nested_sections():
    assert typed(Outer, {"name": "x"}, "outer") == Outer("x")
    read = typed(Outer, {"name": "x", "inner": {"mode": "exact", "sizes": [1, 2]}, "limit": 3}, "outer")
    assert read == Outer("x", Inner("exact", (1, 2)), 3)


@pytest.mark.parametrize("values, message", [
    ({"name": "x", "inner": {"mode": "quick"}}, r"outer.inner.mode='quick' is not one of \['fast', 'exact'\]"),
    ({"name": "x", "inner": {"mod": "fast"}}, r"outer.inner.mod is not a setting \(did you mean outer.inner.mode\?\)"),
    ({"nme": "x"}, r"outer.nme is not a setting \(did you mean outer.name\?\)"),
    ({}, r"outer needs \['name'\]: set outer.name=..."),
])
def test_a_mistake_is_refused_where_it_enters_naming_the_setting(values, message):
    with pytest.raises(AllclsError, match=message):
        typed(Outer, values, "outer")
