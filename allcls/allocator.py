"""Keeping freed memory in the process, so that CPU inference does not spend its time in the kernel.

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

log = logging.getLogger(__name__)

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
