"""The evaluate task's settings (conf/evaluate.yaml), as frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConformalSettings:
    """`conformal`: `coverage` is the wanted share of sets that hold the true class (e.g. 0.95;
    range-checked with the other settings); `enabled: false` switches the sets off."""

    enabled: bool = True
    coverage: float = 0.95
