"""Images as a client sends them: bytes (an upload, a request) or a file, decoded to RGB, with a
limit on their size checked before any pixel is decoded."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from allcls.data.images import ImageReadError, decode_image

MAX_PIXELS = 50_000_000  # a larger image is refused by name, not decoded into gigabytes


def read_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ImageReadError.for_file(path, error.strerror or str(error)) from None


def decode_limited(data: bytes, where: str) -> np.ndarray:
    """An image decoded to RGB, refusing one of more than MAX_PIXELS pixels before decoding it (a
    10,000 x 10,000 image is 300 MB decoded): its header says its size."""
    try:
        with Image.open(io.BytesIO(data)) as header:  # reads the header, not the pixels
            width, height = header.size
    except Image.DecompressionBombError:
        raise ImageReadError.for_file(where, "the image is far larger than a cell image; send a crop") from None
    except (OSError, ValueError):
        pass  # a format PIL cannot read: OpenCV may, and decode_image says why not by name
    else:
        if width * height > MAX_PIXELS:
            raise ImageReadError.for_file(where, f"{width} x {height} pixels is more than "
                                                 f"{MAX_PIXELS // 1_000_000} megapixels; send a crop of the cell")
    return decode_image(data, where)


def decode_files(paths: list[str]) -> tuple[list[np.ndarray | None], list[str]]:
    """Each file decoded (within the limit), or None with the reason it could not be ("" where it was)."""
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
