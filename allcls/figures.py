"""Figures written to files: the file-only backend (no display on servers and in tests), chosen once
before pyplot loads, and the one way a figure is saved."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plt", "save_figure"]


def save_figure(fig, path: Path, dpi: int = 120) -> Path:
    """Lay the figure out, write it to `path` and free it; returns the path."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
