"""How a stopped job ends. SIGTERM (what `kill`, SLURM and other schedulers send) and SIGINT
(Ctrl-C) become exceptions, so that the stage's run is marked KILLED on the way out
(allcls.tracking.Tracker.run) and the process exits non-zero.

While a model trains, a stop is held back until the batch in progress has finished
(`stops_wait_for_the_batch`), so that the checkpoint saved on the way out is a consistent one
(allcls.resume.CheckpointOnStop). A second signal stops at once.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


class Terminated(SystemExit):
    """SIGTERM as an exception: the process exits 143 (128 + 15), which schedulers read as a
    failure. Lightning would otherwise stop at the next batch and exit 0."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


_held: list[BaseException] = []   # stops that arrived while a batch was in progress
_holding = threading.Event()


def _stop_for(signum: int) -> BaseException:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


@contextmanager
def stop_signals_raise() -> Iterator[None]:
    """SIGTERM raises Terminated and SIGINT KeyboardInterrupt inside the block, or, while a model
    trains, once its batch has finished. Main thread only (elsewhere signals cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        if _holding.is_set() and not _held:
            _held.append(_stop_for(signum))
            return
        raise _stop_for(signum)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def stops_wait_for_the_batch() -> Iterator[None]:
    """Inside the block, a stop waits for `pending_stop()` to be asked (after each batch)."""
    _held.clear()
    _holding.set()
    try:
        yield
        if _held:  # the stop came after the last batch: it still ends the job
            raise _held.pop()
    finally:
        _holding.clear()
        _held.clear()


def pending_stop() -> BaseException | None:
    """The stop that arrived during the batch that just ended, if any (then it is no longer held)."""
    if not _held:
        return None
    _holding.clear()
    return _held.pop()
