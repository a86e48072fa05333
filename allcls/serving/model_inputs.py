"""What a packaged model reads from the table it is given: each row's image, from `image` (base64
bytes: a request's JSON, a data URL, line-wrapped as the `base64` tool writes it) or `path` (a file),
decoded within the limits of allcls.inference.decoding, or the reason it could not be, row by row:
a bad row never costs the rows beside it.

Served over HTTP (`mlflow models serve`), a model reads files only where the person who started
the server allowed it: `ALLCLS_READ_PATHS_UNDER=<folder>` in the server's environment lets the
`path` column name files under that folder (after symbolic links are followed); without it a
client cannot make the server open anything on its disk, nor learn which paths exist. In a Python
process (mlflow.pyfunc.load_model) the caller owns the disk, and `path` reads any file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from allcls.data.images import ImageReadError
from allcls.inference.decoding import MAX_FILE_BYTES, decode_limited, read_bytes

log = logging.getLogger(__name__)

PATHS_VARIABLE = "ALLCLS_READ_PATHS_UNDER"
NO_IMAGE_COLUMN = ("the request has no `image` column (columns other than image, path and subject are ignored): "
                   "send each image's bytes base64-encoded in a column named `image`")
NO_FILES = (f"this server reads no files: send the image's bytes base64-encoded in `image` (whoever starts the server "
            f"can let it read the files under one folder with {PATHS_VARIABLE}=<folder>)")


class RowError(ValueError):
    """Why one row's image could not be read."""


class RequestError(ValueError):
    """A request that holds no image at all (no `image` or `path` column): refused whole."""


def allowed_folder(served: bool) -> Path | None:
    """The folder a served model may read files under (None: none); in a Python process, the root."""
    if not served:
        return Path("/")
    named = os.environ.get(PATHS_VARIABLE, "").strip()
    if not named:
        return None
    folder = Path(named).expanduser().resolve()
    if not folder.is_dir():
        log.warning("%s=%s is not a folder: this server reads no files.", PATHS_VARIABLE, named)
        return None
    return folder


def read_rows(table: pd.DataFrame, files_under: Path | None
              ) -> tuple[list[np.ndarray | None], list[str], list[str]]:
    """Each row's image decoded to RGB, or None with the reason ("" where it was read), and the
    SHA-256 of the bytes it was sent ("" where there were none: what the audit trail records). A
    row's `image` is used where it has one, else its `path`; `files_under`: where paths may point
    (None: nowhere)."""
    has_image, has_path = "image" in table.columns, "path" in table.columns
    if not has_image and not has_path:
        raise RequestError(NO_IMAGE_COLUMN)
    images: list[np.ndarray | None] = []
    errors, digests = [], []
    for row in range(len(table)):
        encoded = table["image"].iloc[row] if has_image else None
        path = table["path"].iloc[row] if has_path else None
        from_file = _missing(encoded) and not _missing(path)
        where = str(path) if from_file else "the image"
        digests.append("")
        try:
            data = _file_bytes(path, files_under) if from_file else _image_bytes(encoded)
            digests[-1] = hashlib.sha256(data).hexdigest()
            images.append(decode_limited(data, where))
            errors.append("")
        except RowError as error:
            images.append(None)
            errors.append(str(error))
        except ImageReadError as error:
            images.append(None)
            errors.append(f"{where}: {error.reason}")
    return images, errors, digests


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or \
        (isinstance(value, str) and not value.strip())


def _image_bytes(value: object) -> bytes:
    if _missing(value):
        raise RowError("no image in this row: send the image's bytes base64-encoded in `image`")
    if not isinstance(value, str):
        raise RowError(f"`image` holds a {type(value).__name__}: send the image's bytes as a base64 string")
    text = value.strip()
    if text.startswith("data:") and "," in text[:100]:  # a data URL, as a browser's FileReader gives
        text = text.split(",", 1)[1]
    text = "".join(text.split())  # line-wrapped, as `base64` writes by default
    if len(text) > MAX_FILE_BYTES * 4 // 3 + 4:
        raise RowError(f"the image is more than {MAX_FILE_BYTES / 1e6:.0f} MB: no cell image is this large")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RowError("`image` is not base64-encoded image bytes") from None


def _file_bytes(value: object, files_under: Path | None) -> bytes:
    if files_under is None:
        raise RowError(NO_FILES)
    path = Path(str(value)).expanduser().resolve()
    if not path.is_relative_to(files_under):
        raise RowError(f"{value}: not under {files_under}, the only folder this server reads files from")
    return read_bytes(path)
