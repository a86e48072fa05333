"""Images as a client sends them: bytes (an upload, a request) or a file, decoded to RGB, with limits
on what is read (a regular file of at most MAX_FILE_BYTES) and on how large an image may be decoded
(MAX_PIXELS, checked from the header before any pixel is decoded, whichever decoder then decodes it)."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import numpy as np
from PIL import Image

from allcls.data.images import ImageReadError, decode_image

MAX_PIXELS = 50_000_000  # a larger image is refused by name, not decoded into gigabytes
MAX_FILE_BYTES = 200_000_000  # no cell image is this large: a video, a disk image or a device file is not read
READ_FORMATS = "BMP, PNG, JPEG, TIFF, WebP or GIF"


def read_bytes(path: str | Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """A regular file's bytes, at most `limit` of them (a device file, a pipe or a folder is refused
    without being read: /dev/zero never ends)."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ImageReadError.for_file(path, "not a regular file")
        if info.st_size > limit:
            raise ImageReadError.for_file(path, f"{info.st_size / 1e6:.0f} MB is more than any cell image "
                                                f"({limit / 1e6:.0f} MB at most)")
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as error:
        raise ImageReadError.for_file(path, error.strerror or str(error)) from None
    if len(data) > limit:  # it grew after its size was read
        raise ImageReadError.for_file(path, f"more than {limit / 1e6:.0f} MB")
    return data


def decode_limited(data: bytes, where: str | Path) -> np.ndarray:
    """An image decoded to RGB, refusing one of more than MAX_PIXELS pixels before decoding it (a
    10,000 x 10,000 image is 300 MB decoded). Its header, read by PIL, says its size; a file whose
    header PIL cannot read is refused even where OpenCV could decode it (a Radiance HDR file under a
    .png name): that was a way around the limit, and no cell image comes in such a format."""
    if not data:
        raise ImageReadError.for_file(where, "the file is empty")
    try:
        with Image.open(io.BytesIO(data)) as header:  # reads the header, not the pixels
            width, height = header.size
    except Image.DecompressionBombError:
        raise ImageReadError.for_file(where, "the image is far larger than a cell image; send a crop") from None
    except Exception:  # PIL raises many types for what it cannot identify; all mean the same here
        raise ImageReadError.for_file(where, f"not an image file, or not a {READ_FORMATS} image") from None
    if width * height > MAX_PIXELS:
        raise ImageReadError.for_file(where, f"{width} x {height} pixels is more than "
                                             f"{MAX_PIXELS // 1_000_000} megapixels; send a crop of the cell")
    return decode_image(data, where)


def decode_files(paths: list[str]) -> tuple[list[np.ndarray | None], list[str]]:
    """Each file decoded (within the limits), or None with the reason it could not be ("" where it was)."""
    images: list[np.ndarray | None] = []
    errors = []
    for path in paths:
        try:
            images.append(decode_limited(read_bytes(path), path))
            errors.append("")
        except ImageReadError as error:
            images.append(None)
            errors.append(error.reason)
    return images, errors
