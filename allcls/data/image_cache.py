"""An opt-in disk cache of decoded, cropped and resized images (`data.cache_dir`)."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import albumentations as A
import numpy as np

from allcls.data.images import ImageReadError, read_image
from allcls.data.transforms import InputSpec, preprocessing


class DecodedImageCache:
    """Opt-in disk cache of decoded, cropped and resized images (uint8 .npy files).

    Decoding a 450x450 BMP and shrinking it costs more than reading a small array back, so epochs
    after the first read the cache. Entries are keyed by the file's path, size and modification
    time and by the preprocessing settings: a changed image or input size never hits a stale entry.
    Files are written atomically (temporary name, then rename), so parallel workers can share it.
    """

    def __init__(self, cache_dir: str | os.PathLike, spec: InputSpec, roi_crop: bool):
        settings = f"{spec.size}|{int(roi_crop)}|v1".encode()
        self.folder = Path(cache_dir).expanduser() / hashlib.sha1(settings).hexdigest()[:12]
        self.folder.mkdir(parents=True, exist_ok=True)
        self.preprocess = A.Compose(preprocessing(spec, roi_crop))

    def load(self, path: str) -> np.ndarray:
        try:
            stat = os.stat(path)
        except OSError as error:
            raise ImageReadError.for_file(path, error.strerror or str(error)) from None
        key = hashlib.sha1(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
        entry = self.folder / f"{key}.npy"
        with contextlib.suppress(FileNotFoundError, ValueError, EOFError):  # missing or damaged: rebuilt below
            return np.load(entry)
        image = self.preprocess(image=read_image(path))["image"]
        partial = entry.with_name(f"{key}.{os.getpid()}.tmp.npy")
        np.save(partial, image)
        os.replace(partial, entry)
        return image
