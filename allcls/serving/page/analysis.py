"""What the page shows, computed without Streamlit: the uploads read (image files, and the images
inside zip archives), the model's rows for all of them from one batch, the order in which a person
should look at them, a patient's decision, and the maps of the cells on show."""

from __future__ import annotations

import hashlib
import io
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from allcls.data.images import ImageReadError
from allcls.inference.combining import combine
from allcls.inference.decision import UNREADABLE
from allcls.inference.decoding import MAX_FILE_BYTES, decode_limited
from allcls.inference.explanation import Explanation, explain_images
from allcls.inference.model import Model
from allcls.inference.spec import ModelSpec
from allcls.inference.views import views_for

IMAGE_TYPES = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"]
MAX_ARCHIVE_IMAGES = 2000  # a patient's cells: C-NMC's largest subject has about 1,000
MAX_ARCHIVE_BYTES = 1_000_000_000  # unpacked, all images of one archive together
# Only what zip tools write by default: other methods (bzip2, lzma) shrink a bomb further.
ARCHIVE_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes
    digest: str = ""  # SHA-256 of `data` (filled in when not given)

    def __post_init__(self) -> None:
        if not self.digest:
            object.__setattr__(self, "digest", hashlib.sha256(self.data).hexdigest())


def expand(uploads: Sequence[Upload]) -> tuple[list[Upload], list[str]]:
    """The images among the uploads, a zip archive's images in its place (named `<archive>/<path>`), and
    one line for each thing that could not be used. An archive is unpacked with limits on what its
    entries really hold (never what they declare): an image at most MAX_FILE_BYTES, the whole
    archive at most MAX_ARCHIVE_BYTES and MAX_ARCHIVE_IMAGES images."""
    images, problems = [], []
    for upload in uploads:
        if not upload.name.lower().endswith(".zip"):
            images.append(upload)
            continue
        try:
            archive = zipfile.ZipFile(io.BytesIO(upload.data))
            members = [info for info in archive.infolist() if not info.is_dir() and _is_image(info.filename)]
        except (zipfile.BadZipFile, OSError, ValueError) as error:
            problems.append(f"{upload.name} cannot be opened as a zip archive ({error}): zip the folder again.")
            continue
        if not members:
            problems.append(f"{upload.name} holds no image ({', '.join(IMAGE_TYPES)}).")
        if len(members) > MAX_ARCHIVE_IMAGES:
            problems.append(f"{upload.name} holds {len(members)} images: only the first {MAX_ARCHIVE_IMAGES} are read.")
        budget = MAX_ARCHIVE_BYTES
        for info in members[:MAX_ARCHIVE_IMAGES]:
            name = f"{upload.name}/{info.filename}"
            try:
                data = _unpacked(archive, info, min(MAX_FILE_BYTES, budget))
            except _TooLarge as error:
                problems.append(f"{name}: {error}; left out.")
                if budget < MAX_FILE_BYTES:  # the archive's budget is spent: the rest is left out too
                    problems.append(f"{upload.name} unpacks to more than {MAX_ARCHIVE_BYTES / 1e9:.0f} GB of "
                                    "images: the rest of it is left out. Upload fewer cells at a time.")
                    break
                continue
            except _OtherMethod as error:
                problems.append(f"{name}: {error}; left out.")
                continue
            except (zipfile.BadZipFile, OSError, RuntimeError, EOFError) as error:
                problems.append(f"{name} cannot be unpacked ({error}): left out.")  # damaged, encrypted
                continue
            budget -= len(data)
            images.append(Upload(name, data))
    return images, problems


class _TooLarge(Exception):
    """An archive's entry unpacks to more than it may."""


class _OtherMethod(Exception):
    """An archive's entry is compressed with a method other than deflate (or none)."""


def _unpacked(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """An entry's bytes, read a chunk at a time and refused as soon as they pass `limit`."""
    if info.compress_type not in ARCHIVE_METHODS:
        raise _OtherMethod("compressed with a method other than deflate (zip it again with a common tool)")
    chunks, size = [], 0
    with archive.open(info) as entry:
        while chunk := entry.read(1 << 20):
            size += len(chunk)
            if size > limit:
                raise _TooLarge(f"unpacks to more than {limit / 1e6:.0f} MB")
            chunks.append(chunk)
    return b"".join(chunks)


def _is_image(member: str) -> bool:
    path = PurePosixPath(member)
    hidden = path.name.startswith(".") or "__MACOSX" in path.parts
    return not hidden and path.suffix.lower().lstrip(".") in IMAGE_TYPES


@dataclass(frozen=True)
class Batch:
    """The model's answers for a batch of uploads: `rows` (allcls.inference.model's, `file` first), the
    decoded images (None where unreadable), the SHA-256 of each upload, and for test-time
    augmentation how many views agree with each label."""

    rows: pd.DataFrame
    images: list[np.ndarray | None]
    digests: list[str]
    agreement: list[tuple[int, int] | None]
    made_ns: int = field(default_factory=time.time_ns)  # when the answers were computed


def analyse(model: Model, uploads: Sequence[Upload], tta: bool) -> Batch:
    """Every upload decoded and answered in one batch."""
    images: list[np.ndarray | None] = []
    errors = []
    for upload in uploads:
        try:
            images.append(decode_limited(upload.data, upload.name))
            errors.append("")
        except ImageReadError as error:
            images.append(None)
            errors.append(f"{upload.name} cannot be used: {error.reason}.")
    decoded = [image for image in images if image is not None]
    views = views_for(tta)
    answer = model.answer(decoded, views, show_progress=False) if decoded else None
    rows = model.rows_of(answer, images, errors)
    rows.insert(0, "file", [upload.name for upload in uploads])
    agreement: list[tuple[int, int] | None] = [None] * len(uploads)
    if answer is not None and tta:
        by_view = np.stack([combine(view, model.predictor.weights, model.predictor.rule).argmax(axis=1)
                            for view in answer.outputs.per_view])  # (views, images)
        readable = [i for i, image in enumerate(images) if image is not None]
        for column, index in enumerate(readable):
            agreement[index] = (int((by_view[:, column] == answer.decisions.labels[column]).sum()), len(views))
    return Batch(rows, images, [upload.digest for upload in uploads], agreement)


def suspicion(spec: ModelSpec, rows: pd.DataFrame) -> np.ndarray:
    """How much each cell deserves a look, beyond its referral: the probability of the classes the
    model protects (its referral rule's), else how unsure it is (1 - its top probability)."""
    probabilities = rows[[f"prob_{c}" for c in spec.classes]].to_numpy(dtype=np.float64)
    protect = spec.decision.protect
    if protect is not None:
        return np.nan_to_num(probabilities[:, [spec.classes.index(c) for c in protect.classes]].sum(axis=1))
    return np.nan_to_num(1 - probabilities.max(axis=1))


def attention_order(spec: ModelSpec, rows: pd.DataFrame) -> list[int]:
    """Row indices in the order a person should look at them: referred cells first, then the most
    suspicious; unreadable images (nothing to look at) last."""
    unreadable = rows["refer_reason"].eq(UNREADABLE).to_numpy()
    referred = rows["refer"].to_numpy(bool) & ~unreadable
    score = suspicion(spec, rows)
    return sorted(range(len(rows)), key=lambda i: (bool(unreadable[i]), not referred[i], -score[i], i))


def patient(model: Model, rows: pd.DataFrame) -> pd.Series:
    """The patient's decision from all their cells' rows (allcls.inference.model.Model.patient_rows)."""
    return model.patient_rows(rows.drop(columns="file").reset_index(drop=True), ["patient"] * len(rows)).iloc[0]


def explanations(model: Model, batch: Batch, indices: Sequence[int]) -> dict[int, Explanation]:
    """The maps of the cells at `indices` (readable ones), each for its label, in one pass per member of
    the torch networks (`model.explainer`: Grad-CAM needs their gradients, whichever runtime answers)."""
    shown = [i for i in indices if batch.images[i] is not None]
    targets = [model.spec.classes.index(str(batch.rows["label"].iloc[i])) for i in shown]
    images = [batch.images[i] for i in shown]
    assert model.explainer is not None, "the page asks for maps only where the torch networks are loaded"
    return dict(zip(shown, explain_images(model.explainer, [i for i in images if i is not None], targets),
                    strict=True))
