"""An exclusive lock between processes: a file beside what it guards, held with flock (released by
the kernel if its holder dies, so a killed job never leaves a lock behind)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # not POSIX (Windows): no lock; run the first job alone before parallel ones
    fcntl = None


@contextmanager
def exclusive(lock_file: str | Path) -> Iterator[None]:
    """Hold `lock_file` (created if missing) exclusively for the block; other processes wait."""
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)
