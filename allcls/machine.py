"""The machine a job runs on: how many cores this process may use, how DataLoader workers share
them with torch's threads, and the memory allocator's settings for CPU inference.

Keeping freed memory in the process, so that CPU inference does not spend its time in the kernel:

glibc's malloc serves blocks above a threshold (at most 32 MB, adjusted as it goes) straight from
the kernel with mmap and hands them back when they are freed; it also trims the heap top as soon
as 128 KB are free. A CNN's forward pass on a CPU allocates and frees activation buffers of tens
of megabytes for every batch, so each batch faults its pages in afresh: measured here, evaluating
four MobileNet-sized models spent more time in the kernel than in the models (847 s system
against 675 s user). Raising both thresholds keeps those buffers in the heap and reuses them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)


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
    import torch  # here, not above: the command-line entry points import this module before torch is needed

    torch.set_num_threads(max(1, cores - workers))
    return workers


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
KEEP_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Raise glibc's trim and mmap thresholds to 1 GiB; True when the allocator took it (glibc only)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, Windows, musl without mallopt)
        return False
    taken = bool(mallopt(M_TRIM_THRESHOLD, KEEP_BYTES)) and bool(mallopt(M_MMAP_THRESHOLD, KEEP_BYTES))
    if not taken:
        log.debug("The C library refused the malloc thresholds; inference may spend time in page faults.")
    return taken
