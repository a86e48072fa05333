"""How a stopped job ends: SIGTERM becomes an exception, so that the stage's run is marked KILLED
on the way out (allcls.tracking.Tracker.run) and the process exits non-zero."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


class Terminated(SystemExit):
    """SIGTERM (what `kill`, SLURM and other schedulers send) as an exception, so that the run is
    marked KILLED on the way out and the process exits 143 (128 + 15), which schedulers read as
    a failure. Lightning would otherwise stop at the next batch and exit 0."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM raises Terminated inside the block (main thread only; elsewhere signals cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
