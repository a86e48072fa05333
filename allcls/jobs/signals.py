"""How a stopped job ends. SIGTERM (what `kill`, SLURM and other schedulers send) and SIGINT
(Ctrl-C) become exceptions that carry their reason (`stop_reason`), so that the stage's run is
marked KILLED with it on the way out (allcls.tracking.tracker) and the process exits non-zero.
SLURM's warning before a time limit or a preemption (SIGUSR1/SIGUSR2, when a scheduler such as
submitit listens for it) goes on to the scheduler's own handler, which requeues the job; the
requeued job resumes (allcls.jobs.resume).

While a model trains, a stop is held back until the batch in progress has finished
(`stops_wait_for_the_batch`), so that the checkpoint saved on the way out is a consistent one
(allcls.jobs.resume.CheckpointOnStop). A second signal acts at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

REASONS: dict[int, str] = {signal.SIGTERM: "stopped by SIGTERM", signal.SIGINT: "interrupted (SIGINT / Ctrl-C)",
           signal.SIGUSR1: "preempted or out of time (SIGUSR1): requeued, it resumes from last.ckpt",
           signal.SIGUSR2: "preempted or out of time (SIGUSR2): requeued, it resumes from last.ckpt"}


class Terminated(SystemExit):
    """SIGTERM as an exception: the process exits 143 (128 + 15), which schedulers read as a
    failure. Lightning would otherwise stop at the next batch and exit 0."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


_held: list[Callable[[], None]] = []   # the stop that arrived while a batch was in progress
_holding = threading.Event()
_received: list[int] = []              # the stop signals this process received


@contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Inside the block SIGTERM raises Terminated, SIGINT KeyboardInterrupt, and a scheduler's
    preemption signal calls its handler, at once or, while a model trains, once its batch has
    finished; the exception that ends the block says which signal it was (`stop_reason`). Main
    thread only (elsewhere signals cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = {signum: signal.getsignal(signum) for signum in REASONS}

    def act(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGTERM:
            raise Terminated()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt()
        scheduler = previous[signum]
        assert callable(scheduler)  # a preemption signal is ours only where its handler is callable
        scheduler(signum, frame)  # the scheduler's: it requeues the job and exits

    def stop(signum: int, frame: FrameType | None) -> None:
        _received.append(signum)
        if _holding.is_set() and not _held:
            _held.append(lambda: act(signum, None))
            return
        act(signum, frame)

    # Preemption signals only where a scheduler listens for them: elsewhere they keep their meaning.
    ours = [signum for signum in REASONS if signum in (signal.SIGTERM, signal.SIGINT) or callable(previous[signum])]
    for signum in ours:
        signal.signal(signum, stop)
    try:
        yield
    except (KeyboardInterrupt, SystemExit) as error:
        if _received:  # a stop signal ended the block: say which (the stage's run records it as its error)
            # an attribute of our own on a built-in exception, which its type cannot declare
            error.stop_reason = REASONS[_received[-1]]  # type: ignore[union-attr]
        raise
    finally:
        for signum in ours:
            signal.signal(signum, previous[signum])


@contextmanager
def stops_wait_for_the_batch() -> Iterator[None]:
    """Inside the block, a stop waits for `pending_stop()` to be asked (after each batch)."""
    _held.clear()
    _holding.set()
    try:
        yield
        if _held:  # the stop came after the last batch: it still ends the job
            _held.pop()()
    finally:
        _holding.clear()
        _held.clear()


def pending_stop() -> Callable[[], None] | None:
    """The stop that arrived during the batch that just ended, if any: calling it stops the job."""
    if not _held:
        return None
    _holding.clear()
    return _held.pop()
