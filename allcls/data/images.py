"""Decoding image files into RGB uint8 arrays, whatever their mode, and finding the ones that are broken.

OpenCV decodes (it is several times faster than PIL for the BMPs of C-NMC); PIL is the fallback for
formats OpenCV lacks and the source of a readable reason when a file cannot be decoded. Every image
comes out as an H x W x 3 uint8 RGB array: grayscale is repeated over three channels, an alpha
channel is composited onto black (the background of segmented cells), 16-bit and float images are
rescaled to 0..255.
"""

from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from allcls.errors import AllclsError

IMAGE_SUFFIXES = frozenset({".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".gif"})

# We report unreadable files ourselves, by path; OpenCV's own log lines would only repeat it.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
# DataLoader workers are the parallelism; OpenCV's own threads would oversubscribe the cores.
cv2.setNumThreads(1)


class ImageReadError(AllclsError):
    """An image file that cannot be decoded. Build it with `for_file`; the plain one-message
    constructor stays so that PyTorch can re-raise it from a DataLoader worker."""

    reason = "unreadable"

    @classmethod
    def for_file(cls, path: str | Path, reason: str) -> ImageReadError:
        error = cls(
            f"Cannot read image {path}: {reason}. Replace or remove the file "
            "(or set dataset.skip_unreadable_images=true to leave it out of the run)."
        )
        error.reason = reason
        return error


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def to_rgb_uint8(array: np.ndarray, bgr: bool) -> np.ndarray:
    """Any decoded image array -> H x W x 3 uint8 RGB. `bgr` says the channels are in OpenCV order."""
    if array.dtype == np.uint16:
        array = (array // 257).astype(np.uint8)
    elif array.dtype.kind == "f":
        scale = 255.0 if float(np.nanmax(array, initial=0.0)) <= 1.0 else 1.0
        array = np.clip(np.nan_to_num(array) * scale, 0, 255).astype(np.uint8)
    elif array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)

    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        return cv2.cvtColor(array, cv2.COLOR_GRAY2RGB)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"unsupported image array shape {array.shape}")
    if array.shape[2] == 4:
        alpha = array[:, :, 3:4].astype(np.uint16)
        array = (array[:, :, :3].astype(np.uint16) * alpha // 255).astype(np.uint8)
    # cvtColor, not array[:, :, ::-1]: the strided copy costs as much as decoding a BMP.
    return cv2.cvtColor(array, cv2.COLOR_BGR2RGB) if bgr else np.ascontiguousarray(array)


def decode_image(data: bytes | np.ndarray, path: str | Path = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to H x W x 3 uint8 RGB, or raise ImageReadError naming `path`."""
    buffer = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray)) else data
    if buffer.size == 0:
        raise ImageReadError.for_file(path, "the file is empty")
    decoded = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if decoded is not None and decoded.size > 0:
        return to_rgb_uint8(decoded, bgr=True)
    return _decode_with_pil(buffer.tobytes(), path)


def _decode_with_pil(data: bytes, path: str | Path) -> np.ndarray:
    image: Image.Image  # the file as opened, then perhaps converted
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1", "LA"):
                image = image.convert("RGBA" if "A" in image.mode or image.mode == "P" else "RGB")
            array = np.asarray(image)
    except Image.DecompressionBombError as error:
        raise ImageReadError.for_file(path, f"the image is too large to decode safely ({error})") from None
    except Exception as error:  # PIL raises many types for broken files; all mean the same here
        reason = str(error) or type(error).__name__
        if "cannot identify image file" in reason:
            reason = "not an image file, or a format this library cannot decode"
        raise ImageReadError.for_file(path, reason) from None
    if array.size == 0:
        raise ImageReadError.for_file(path, "the image has no pixels")
    try:
        return to_rgb_uint8(array, bgr=False)
    except ValueError as error:
        raise ImageReadError.for_file(path, str(error)) from None


def read_image(path: str | Path) -> np.ndarray:
    """Read one image file as H x W x 3 uint8 RGB."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as error:
        raise ImageReadError.for_file(path, error.strerror or str(error)) from None
    return decode_image(data, path)


@dataclass(frozen=True)
class ImageCheck:
    """What scanning one file found: its content hash, or why it cannot be used."""

    path: str
    sha1: str | None
    problem: str | None = None


def check_image(path: str | Path) -> ImageCheck:
    """Read and fully decode one file; hash its bytes (to find byte-identical duplicates)."""
    try:
        data = Path(path).read_bytes()
        decode_image(data, path)
    except ImageReadError as error:
        return ImageCheck(str(path), None, error.reason)
    except OSError as error:
        return ImageCheck(str(path), None, error.strerror or str(error))
    return ImageCheck(str(path), hashlib.sha1(data).hexdigest())


def check_images(paths: list[str], workers: int = 4) -> list[ImageCheck]:
    """check_image over many files; decoding releases the GIL, so threads give real parallelism."""
    if len(paths) < 64:
        return [check_image(path) for path in paths]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(check_image, paths, chunksize=32))
