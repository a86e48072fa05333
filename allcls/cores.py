"""How many cores this process may use, and how DataLoader workers share them with torch's threads."""

from __future__ import annotations

import os

import torch


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's or a Slurm job's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_num_workers() -> int:
    """One loader worker per usable core, up to 8."""
    return max(1, min(8, usable_cores()))


def inference_workers(requested: int | None, device) -> int:
    """Loader workers for prediction, with torch's threads set to the cores they leave free.

    On a CPU the model's forward passes dominate (tens of milliseconds per image against one or two
    to decode it), and a worker beside torch's threads on the same cores makes them preempt each
    other. So a CPU keeps every core for torch and decodes in the main process below 8 cores (one
    worker per 8 cores above). A GPU does the model's work; there workers keep it fed.
    """
    cores = usable_cores()
    if getattr(device, "type", device) == "cuda":
        return default_num_workers() if requested is None else int(requested)
    workers = cores // 8 if requested is None else int(requested)
    torch.set_num_threads(max(1, cores - workers))
    return workers
