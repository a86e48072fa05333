"""The one exception type for problems a user can fix, and how entry scripts report it."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class AllclsError(Exception):
    """A mistake in the user's data, config or runs.

    The message names the thing that is wrong and what to do about it. Entry scripts print it
    as one line, without a traceback from deep inside a library.
    """


def user_message(error: BaseException) -> str:
    """The message of an AllclsError, also when PyTorch re-raised it from a DataLoader worker
    (it then wraps the worker's traceback around the original message)."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text


def reports_user_errors(task: Callable[..., T]) -> Callable[..., T]:
    """For every entry point: an AllclsError ends the program with its message and exit code 2; any
    other exception keeps its full traceback (that one is a bug to report)."""

    @functools.wraps(task)
    def wrapper(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        except AllclsError as error:
            print(f"error: {user_message(error)}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper
