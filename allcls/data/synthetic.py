"""A synthetic ALL dataset, drawn procedurally and WRITTEN in the original cnmc or aria layout.

Tests and the demo read it back through the same readers that real data goes through. Each cell is
a cytoplasm with a nucleus whose size, outline and chromatin texture depend on the class, and each
subject (patient) has its own stain shift, so a model has something real to learn and a
subject-grouped split matters. Class distributions overlap: the task is learnable, not trivial.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from allcls.data.cell_drawing import STYLES, CellStyle, draw_cell
from allcls.data.readers import ARIAReader, CNMCReader, DatasetReader, Sample
from allcls.errors import AllclsError

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
STAMP = "synthetic.json"
CNMC_ZOOM = 1.6  # C-NMC cells sit inside a wide black border (hence its region-of-interest crop)
LAYOUTS = {"cnmc": ("hem", "all"), "aria": ("Benign", "Early", "Pre", "Pro")}


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines the generated files (its hash names the folder)."""

    layout: str = "cnmc"
    image_size: int = 64
    subjects_per_class: int = 9
    cells_per_subject: int = 8
    test_subjects_per_class: int = 3
    duplicate_pairs: int = 2
    separation: float = 1.0  # 1: the classes as STYLES draws them; below 1 their cells look more alike
    stain_spread: float = 1.0  # how far subjects' stains differ (1: a few percent gain, a few levels offset)
    subject_morphology: float = 0.0  # how far each subject's cells differ in shape and texture from its class's
    seed: int = 0

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise AllclsError(f"dataset.layout={self.layout!r} is not one of {sorted(LAYOUTS)}.")
        if self.image_size < 16 or self.subjects_per_class < 3 or self.cells_per_subject < 1:
            raise AllclsError("The synthetic dataset needs image_size >= 16, subjects_per_class >= 3 "
                              "(one per C-NMC fold) and cells_per_subject >= 1.")
        if not 0 < self.separation <= 2 or self.stain_spread < 0 or self.subject_morphology < 0:
            raise AllclsError("The synthetic dataset needs 0 < separation <= 2, stain_spread >= 0 and "
                              "subject_morphology >= 0.")

    def styles(self) -> dict[str, CellStyle]:
        """The layout's classes as drawn: STYLES pulled towards their average by `separation`."""
        chosen = {label: STYLES[label] for label in LAYOUTS[self.layout]}
        if self.separation == 1:
            return chosen
        fields = [f.name for f in dataclasses.fields(CellStyle)]
        centre = {name: np.mean([getattr(style, name) for style in chosen.values()], axis=0) for name in fields}

        def pulled(name, value):
            middle = centre[name]
            if isinstance(value, tuple):  # (mean, sd): only the mean moves
                return (float(middle[0] + self.separation * (value[0] - middle[0])), value[1])
            return float(middle + self.separation * (value - middle))

        return {label: CellStyle(**{name: pulled(name, getattr(style, name)) for name in fields})
                for label, style in chosen.items()}

    def folder_name(self) -> str:
        # The drawing parameters are part of the hash: changing how cells look never reuses old files.
        drawing = {"v": GENERATOR_VERSION, "styles": {k: asdict(v) for k, v in STYLES.items()}, "zoom": CNMC_ZOOM}
        digest = hashlib.sha1(json.dumps(asdict(self) | drawing, sort_keys=True).encode()).hexdigest()
        return f"{self.layout}-{self.image_size}px-{digest[:8]}"


def _stain(rng: np.random.Generator, spread: float = 1.0) -> np.ndarray:
    """Per-subject stain: channel gains and offsets (different labs, stain batches, microscopes)."""
    return np.concatenate([rng.normal(1.0, 0.04 * spread, 3), rng.normal(0.0, 4.0 * spread, 3)])


def _subject_style(rng: np.random.Generator, style: CellStyle, amount: float) -> CellStyle:
    """A subject's own version of its class: every mean shifted by `amount` of its spread between
    cells (0: no shift, and no random draw, so the data of earlier versions stays as it was)."""
    if amount == 0:
        return style
    shifted: dict[str, Any] = {}  # CellStyle's fields: (mean, spread) pairs and a float
    for field in dataclasses.fields(CellStyle):
        value = getattr(style, field.name)
        if isinstance(value, tuple):
            shifted[field.name] = (float(value[0] + amount * value[1] * rng.normal()), value[1])
        else:
            shifted[field.name] = float(max(0.0, value * (1 + 0.5 * amount * rng.normal())))
    return CellStyle(**shifted)


def write_cnmc(spec: SyntheticSpec, root: Path) -> None:
    rng = np.random.default_rng(spec.seed)
    styles = spec.styles()
    train: list[tuple[str, str, np.ndarray, CellStyle]] = []  # (subject, label, stain, style)
    test: list[tuple[str, str, np.ndarray, CellStyle]] = []
    for label in LAYOUTS["cnmc"]:
        for k in range(spec.subjects_per_class + spec.test_subjects_per_class):
            # Normal subjects are H<n>; the original data spells a few of them with a lowercase h.
            subject = (("h" if k % 3 == 2 else "H") + str(k + 1)) if label == "hem" else str(k + 1)
            look = (_stain(rng, spec.stain_spread), _subject_style(rng, styles[label], spec.subject_morphology))
            (train if k < spec.subjects_per_class else test).append((subject, label, *look))

    for index, (subject, label, stain, style) in enumerate(train):
        folder = root / "training_data" / f"fold_{index % 3}" / label
        folder.mkdir(parents=True, exist_ok=True)
        for image_no in range(1, spec.cells_per_subject + 1):
            name = f"UID_{subject}_{image_no}_{rng.integers(1, 9)}_{label}.bmp"
            _write(folder / name, draw_cell(rng, style, spec.image_size, stain, "black", CNMC_ZOOM)[0])

    test_dir = root / "validation_data" / "C-NMC_test_prelim_phase_data"
    test_dir.mkdir(parents=True)
    rows, number = [], 0
    for subject, label, stain, style in test:
        for image_no in range(1, spec.cells_per_subject + 1):
            number += 1
            rows.append([f"UID_{subject}_{image_no}_1_{label}.bmp", f"{number}.bmp", "1" if label == "all" else "0"])
            _write(test_dir / f"{number}.bmp", draw_cell(rng, style, spec.image_size, stain, "black", CNMC_ZOOM)[0])
    # Like the shared sample of the real data: the labels file lists images that are not there.
    rows += [[f"UID_{test[0][0]}_99_{i}_{test[0][1]}.bmp", f"{number + i}.bmp", "0"] for i in (1, 2)]
    with (root / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["Patient_ID", "new_names", "labels"], *rows])


def write_aria(spec: SyntheticSpec, root: Path) -> None:
    """Original/ (smear field) and Segmented/ (same field, background black), same file names.
    File names carry no patient id; consecutive numbers come from one patient, as in the original."""
    rng = np.random.default_rng(spec.seed)
    styles = spec.styles()
    subjects = spec.subjects_per_class + spec.test_subjects_per_class
    for label in LAYOUTS["aria"]:
        prefix = "WBC-Benign" if label == "Benign" else f"WBC-Malignant-{label}"
        number = 0
        for _ in range(subjects):
            stain = _stain(rng, spec.stain_spread)
            style = _subject_style(rng, styles[label], spec.subject_morphology)
            for _ in range(spec.cells_per_subject):
                number += 1
                image, mask = draw_cell(rng, style, spec.image_size, stain, "smear")
                name = f"{prefix}-{number:03d}.jpg"
                _write(root / "Original" / label / name, image)
                _write(root / "Segmented" / label / name, image * mask[..., None])
        if label == "Pro":  # the original has byte-identical duplicate pairs in Pro, at adjacent numbers
            for k in range(min(spec.duplicate_pairs, number // 2)):
                for variant in ("Original", "Segmented"):
                    folder = root / variant / label
                    shutil.copyfile(folder / f"{prefix}-{2 * k + 1:03d}.jpg", folder / f"{prefix}-{2 * k + 2:03d}.jpg")


def _write(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 92] if path.suffix == ".jpg" else []
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]), params):
        raise AllclsError(f"Could not write {path}: check that the folder is writable.")


def materialise(spec: SyntheticSpec, root: str | Path) -> Path:
    """Write the dataset under `root` (once; later calls reuse it) and return its folder.

    The folder is named after the spec's hash, so other settings get another folder and nothing
    is ever overwritten. Writing goes to a temporary folder renamed at the end, so an interrupted
    run or a concurrent process never leaves a half-written dataset behind.
    """
    target = Path(root).expanduser().resolve() / spec.folder_name()
    if (target / STAMP).is_file():
        return target
    if target.exists():
        raise AllclsError(f"{target} exists but was not written by the synthetic generator (no {STAMP}): "
                          "move it away or pick another dataset.root.")
    staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)  # only ever our own leftover from this pid
    staging.mkdir(parents=True)
    log.info("Writing a synthetic %s dataset to %s", spec.layout, target)
    (write_cnmc if spec.layout == "cnmc" else write_aria)(spec, staging)
    (staging / STAMP).write_text(json.dumps(asdict(spec) | {"generator_version": GENERATOR_VERSION}, indent=2))
    try:
        staging.rename(target)
    except OSError:  # another process finished the same dataset first
        shutil.rmtree(staging)
    return target


class SyntheticReader(DatasetReader):
    """Generates the dataset (if needed) in the cnmc or aria layout, then reads it with that reader."""

    def __init__(self, root, layout: str = "cnmc", classes=None, variant: str = "Original", **spec):
        self.spec = SyntheticSpec(layout=layout, **spec)
        super().__init__(root, classes or LAYOUTS[self.spec.layout])
        self.name = f"synthetic-{layout}"
        self.variant = variant

    def read(self) -> list[Sample]:
        folder = materialise(self.spec, self.root)
        reader = (CNMCReader(folder, self.classes) if self.spec.layout == "cnmc"
                  else ARIAReader(folder, self.classes, variant=self.variant))
        return reader.read()
