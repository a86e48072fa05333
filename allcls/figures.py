"""Figures written to files, made with matplotlib's object-oriented API: a Figure of its own, no
pyplot state and no backend to choose, so nothing global changes (and nothing needs a display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure


def subplots(*args: Any, **kwargs: Any) -> tuple[Figure, Any]:
    """A new figure and its axes, as pyplot's `subplots` would make them (kwargs: figsize, squeeze...)."""
    figsize = kwargs.pop("figsize", None)
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def save_figure(fig: Figure, path: Path, dpi: int = 120) -> Path:
    """Lay the figure out and write it to `path`, cropped to what it draws (a colour bar's label
    included); returns the path."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
