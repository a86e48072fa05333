"""Progress bars for the long steps outside Lightning's loops: predicting images (with TTA views),
Grad-CAM, bootstrap replicates. `TQDM_DISABLE=1` switches them off."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T] | None = None, *, desc: str, total: int | None = None, unit: str = "it",
             show: bool = True) -> tqdm:
    """A bar on stderr that stays when done, so the terminal keeps a record of what took how long.
    `show=False` for a step inside a longer one that has its own bar."""
    hidden = {} if show else {"disable": True}  # passing disable=False would override $TQDM_DISABLE
    return tqdm(iterable, desc=desc, total=total, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=True,
                **hidden)
