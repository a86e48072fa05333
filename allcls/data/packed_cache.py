"""The packed cache (`data.cache_dir`): one split's images, decoded and preprocessed (crop, resize),
as one memory-mapped N x S x S x 3 uint8 array. Written once, then read with no decoding and no
file opened per image: a batch is one gather from the map (page cache, then memory speed).

An array is keyed by its images (each file's path, size and modification time, in order) and the
preprocessing settings, so a changed image, a changed split or another input size never hits a
stale array. It is written under a lock (one writer; DDP ranks and parallel jobs wait for it and
then read it) to a temporary name that is renamed only once every image is in, so no reader ever
sees a half-written array.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from allcls.data.images import ImageReadError, read_image
from allcls.data.preprocessing import InputSpec, preprocess
from allcls.errors import AllclsError
from allcls.locks import exclusive
from allcls.machine import usable_cores
from allcls.progress import progress

log = logging.getLogger(__name__)

FORMAT = 1  # bump when what an array holds changes: older arrays then no longer match any key
SPARE_BYTES = 256 * 2**20  # left free on the disk after the array is written


class PackedImages:
    """A packed array, opened lazily by each process that reads it: loader workers receive the
    path, not the memory map (a pickled np.memmap would copy the whole array)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return self._array

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, row: int) -> np.ndarray:
        return np.array(self.array[row])  # a copy: a view would keep the map's pages referenced

    def gather(self, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        """The images at `rows`, into `out` (len(rows) x S x S x 3 uint8): one copy, no decoding."""
        return np.take(self.array, rows, axis=0, out=out)

    def __getstate__(self) -> dict:
        return {"path": self.path, "_array": None}


def check_cache_dir(cache_dir: str | os.PathLike) -> None:
    """Refuse, before any work, a `data.cache_dir` that cannot hold the cache."""
    folder = Path(cache_dir).expanduser()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise AllclsError(f"data.cache_dir={cache_dir} cannot be a folder: {existing} is a file. Point data.cache_dir "
                          "at a folder (it is made if missing), or data.cache_dir=null for no cache.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise AllclsError(f"data.cache_dir={cache_dir} cannot be written ({existing} is not writable for this user): "
                          "point it at a folder you can write, or data.cache_dir=null for no cache.")


def cache_key(paths: Sequence[str], spec: InputSpec, roi_crop: bool) -> str:
    """What the array's content depends on: the preprocessing settings and each file's identity."""
    digest = hashlib.sha1(f"packed-v{FORMAT}|{spec.size}|{int(roi_crop)}\n".encode())
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError as error:
            raise ImageReadError.for_file(path, error.strerror or str(error)) from None
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def packed_images(cache_dir: str | os.PathLike, name: str, paths: Sequence[str], spec: InputSpec, roi_crop: bool,
                  workers: int | None = None) -> PackedImages:
    """The packed array of `paths` (in this order) under `cache_dir`, written first if no array
    matches them. `name` (e.g. `<dataset>-train`) starts the file's name, for people browsing the folder."""
    folder = Path(cache_dir).expanduser()
    stem = f"{name}-{spec.size}px{'-roi' if roi_crop else ''}"
    target = folder / f"{stem}-{cache_key(paths, spec, roi_crop)[:20]}.npy"
    shape = (len(paths), spec.size, spec.size, 3)
    if not _holds(target, shape):
        with exclusive(target.with_suffix(".lock")):
            if not _holds(target, shape):  # unless another process wrote it while this one waited
                _write(target, paths, spec, roi_crop, workers or usable_cores())
        _mention_older_arrays(target, stem)
    return PackedImages(target)


def _holds(target: Path, shape: tuple[int, ...]) -> bool:
    try:
        array = np.load(target, mmap_mode="r")
    except (OSError, ValueError):  # missing, or not an array (a damaged file is written again)
        return False
    return array.shape == shape and array.dtype == np.uint8


def _write(target: Path, paths: Sequence[str], spec: InputSpec, roi_crop: bool, workers: int) -> None:
    shape = (len(paths), spec.size, spec.size, 3)
    target.parent.mkdir(parents=True, exist_ok=True)
    needed, free = int(np.prod(shape)), shutil.disk_usage(target.parent).free
    if needed + SPARE_BYTES > free:
        raise AllclsError(f"data.cache_dir={target.parent} has {free / 2**30:.1f} GiB free, but the packed images of "
                          f"{target.name.rsplit('-', 1)[0]} need {needed / 2**30:.1f} GiB ({shape[0]} images of "
                          f"{spec.size} x {spec.size} px): free some space, point data.cache_dir at a larger disk, "
                          "or train without the cache (data.cache_dir=null).")
    for leftover in target.parent.glob(f"{target.stem}.*.partial.npy"):
        leftover.unlink()  # of a writer that died: this process holds the lock, so none is being written
    partial = target.with_name(f"{target.stem}.{os.getpid()}.partial.npy")
    pool = ThreadPoolExecutor(max_workers=workers)  # decoding and resizing release the GIL: threads run in parallel
    try:
        array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)

        def fill(row: int) -> None:
            # pyflakes reads the `del array` below as leaving this name undefined; every fill has run by then
            array[row] = preprocess(read_image(paths[row]), spec, roi_crop)  # noqa: F821

        list(progress(pool.map(fill, range(len(paths))), total=len(paths), unit="img",  # runs the fills, bar ticking
                      desc=f"Packing {target.name.rsplit('-', 1)[0]} images into {target.parent}"))
        array.flush()
        del array
        os.replace(partial, target)  # atomic: readers see the whole array or none
    except BaseException:  # a broken image, Ctrl-C, a full disk: no half-written array stays
        pool.shutdown(wait=True, cancel_futures=True)
        partial.unlink(missing_ok=True)
        raise
    pool.shutdown()
    log.info("Packed %d images (%.0f MiB) into %s", len(paths), np.prod(shape) / 2**20, target)


def _mention_older_arrays(target: Path, stem: str) -> None:
    older = [p for p in target.parent.glob(f"{stem}-*.npy") if p != target and ".partial" not in p.name]
    if older:
        size = sum(p.stat().st_size for p in older) / 2**20
        log.info("%s also holds %d packed array(s) of %s that no longer match its images or settings (%.0f MiB: %s); "
                 "delete them to free the space.", target.parent, len(older), stem, size,
                 ", ".join(p.name for p in older[:3]))
