"""A synthetic ALL dataset, drawn procedurally and WRITTEN in the original cnmc or aria layout.

Tests and the demo read it back through the same readers that real data goes through. Each cell is
a cytoplasm with a nucleus whose size, outline and chromatin texture depend on the class, and each
subject (patient) has its own stain shift, so a model has something real to learn and a
subject-grouped split matters. Class distributions overlap: the task is learnable, not trivial.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from allcls.data.readers import ARIAReader, CNMCReader, DatasetReader, Sample
from allcls.errors import AllclsError

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
STAMP = "synthetic.json"


@dataclass(frozen=True)
class CellStyle:
    """How one class looks: each field is (mean, standard deviation) over cells."""

    cell_radius: tuple[float, float]  # fraction of the half-width of the image
    nucleus_ratio: tuple[float, float]  # nucleus radius / cell radius
    irregularity: tuple[float, float]  # amplitude of the nucleus outline's bumps and clefts
    chromatin_grain: tuple[float, float]  # texture cells across the nucleus: higher = finer chromatin
    chromatin_contrast: tuple[float, float]
    nucleoli: float  # mean number of pale nucleoli


# Lymphoblasts (ALL) are larger, with a high nucleus-to-cytoplasm ratio, fine chromatin and
# nucleoli; normal lymphocytes (hem) are smaller, rounder, with coarse clumped chromatin.
STYLES = {
    "hem": CellStyle((0.62, 0.08), (0.66, 0.06), (0.05, 0.02), (5, 1.5), (0.34, 0.07), 0.1),
    "all": CellStyle((0.66, 0.08), (0.80, 0.06), (0.09, 0.03), (11, 2.5), (0.12, 0.05), 2.5),
    # The 4-class dataset: benign hematogones, then early pre-B, pre-B and pro-B blasts.
    "Benign": CellStyle((0.58, 0.08), (0.68, 0.06), (0.04, 0.02), (5, 1.5), (0.30, 0.07), 0.2),
    "Early": CellStyle((0.62, 0.08), (0.72, 0.06), (0.07, 0.03), (8, 2.0), (0.23, 0.06), 0.7),
    "Pre": CellStyle((0.65, 0.08), (0.75, 0.06), (0.10, 0.03), (11, 2.0), (0.18, 0.06), 1.2),
    "Pro": CellStyle((0.68, 0.08), (0.78, 0.06), (0.13, 0.04), (14, 2.5), (0.13, 0.05), 1.8),
}
CYTOPLASM_RGB = np.array([176.0, 158.0, 205.0])
NUCLEUS_RGB = np.array([92.0, 52.0, 136.0])
PLASMA_RGB = np.array([232.0, 206.0, 214.0])
RBC_RGB = np.array([214.0, 142.0, 156.0])
CNMC_ZOOM = 1.6  # C-NMC cells sit inside a wide black border (hence its region-of-interest crop)
LAYOUTS = {"cnmc": ("hem", "all"), "aria": ("Benign", "Early", "Pre", "Pro")}


def _soft_mask(signed_distance: np.ndarray, pixel: float) -> np.ndarray:
    """Anti-aliased inside-mask from a signed distance (negative inside), one pixel wide edge."""
    return np.clip(0.5 - signed_distance / pixel, 0.0, 1.0)


def _grain(rng: np.random.Generator, size: int, cells: float) -> np.ndarray:
    """Smooth random texture in [-1, 1] with about `cells` blobs across the image."""
    n = max(2, int(round(cells)))
    coarse = rng.uniform(-1.0, 1.0, (n, n)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def _outline(rng: np.random.Generator, angle: np.ndarray, amplitude: float) -> np.ndarray:
    """Radial multiplier of a blob outline: a few random low-frequency bumps (and clefts)."""
    radius = np.ones_like(angle)
    for frequency in (2, 3, 5):
        radius += amplitude / frequency * 2 * rng.normal() * np.cos(frequency * angle + rng.uniform(0, 2 * np.pi))
    return radius


def draw_cell(rng: np.random.Generator, style: CellStyle, size: int, stain: np.ndarray,
              background: str, zoom: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """One cell image (H x W x 3 uint8 RGB) and its cell mask. `background`: 'black' or 'smear'.
    `zoom` > 1 shows the cell smaller, off-centre, inside a wider frame (C-NMC's black border)."""
    draw = lambda pair, low, high: float(np.clip(rng.normal(*pair), low, high))  # noqa: E731
    axis = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1) * zoom
    centre = rng.uniform(-0.25, 0.25, 2) * (zoom - 1)
    y, x = np.meshgrid(axis - centre[1], axis - centre[0], indexing="ij")
    pixel = 2.0 * zoom / size

    cell_r = draw(style.cell_radius, 0.3, 0.92)
    theta, stretch = rng.uniform(0, np.pi), rng.uniform(0.85, 1.15)
    xr, yr = x * np.cos(theta) + y * np.sin(theta), -x * np.sin(theta) + y * np.cos(theta)
    r_cell = np.hypot(xr * stretch, yr / stretch)
    angle = np.arctan2(yr, xr)
    cell = _soft_mask(r_cell - cell_r * _outline(rng, angle, 0.03), pixel)

    nuc_r = cell_r * draw(style.nucleus_ratio, 0.4, 0.95)
    shift = (cell_r - nuc_r) * rng.uniform(0, 0.8) * np.array([np.cos(a := rng.uniform(0, 2 * np.pi)), np.sin(a)])
    xn, yn = x - shift[0], y - shift[1]
    r_nuc = np.hypot(xn, yn)
    outline = _outline(rng, np.arctan2(yn, xn), draw(style.irregularity, 0.0, 0.3))
    nucleus = _soft_mask(r_nuc - nuc_r * outline, pixel) * cell

    chromatin = _grain(rng, size, draw(style.chromatin_grain, 2, 30) / max(nuc_r, 0.2))
    texture = 1.0 + draw(style.chromatin_contrast, 0.02, 0.6) * chromatin
    for _ in range(rng.poisson(style.nucleoli)):
        spot = rng.uniform(-0.5, 0.5, 2) * nuc_r
        spot_r = nuc_r * rng.uniform(0.10, 0.18)
        texture += 0.35 * _soft_mask(np.hypot(xn - spot[0], yn - spot[1]) - spot_r, pixel * 2)

    cytoplasm = CYTOPLASM_RGB * (1.0 + 0.06 * _grain(rng, size, 6))[..., None]
    colour = cytoplasm * (1 - nucleus[..., None]) + (NUCLEUS_RGB * texture[..., None]) * nucleus[..., None]
    if background == "smear":
        field = _smear(rng, size, x, y, pixel, keep_out=r_cell < cell_r * 1.1)
        image = colour * cell[..., None] + field * (1 - cell[..., None])
    else:
        image = colour * cell[..., None]
    image = image * stain[:3] + stain[3:] * cell[..., None]
    image += rng.normal(0, 3.0, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), cell > 0.5


def _smear(rng, size, x, y, pixel, keep_out: np.ndarray) -> np.ndarray:
    """A peripheral-blood-smear background: plasma with red blood cells around the cell of interest."""
    field = np.broadcast_to(PLASMA_RGB, (size, size, 3)).copy()
    for _ in range(rng.integers(4, 9)):
        cx, cy = rng.uniform(-1, 1, 2)
        radius = rng.uniform(0.18, 0.28)
        r = np.hypot(x - cx, y - cy)
        rbc = _soft_mask(r - radius, pixel) * ~keep_out
        pale_centre = 1 + 0.12 * _soft_mask(r - radius * 0.45, pixel * 4)
        field = field * (1 - rbc[..., None]) + (RBC_RGB * pale_centre[..., None]) * rbc[..., None]
    label = slice(int(size * 0.86), int(size * 0.95)), slice(int(size * 0.70), int(size * 0.95))
    field[label] = 250.0  # the scale-bar label that the original images carry in one corner
    return field


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
    shifted = {}
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
    train, test = [], []
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
