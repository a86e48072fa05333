"""Images a cell classifier should refuse, to measure its out-of-distribution gate (evaluate.py).

Far from the training cells: natural photographs (scikit-image's `data` module ships them, offline),
documents and rendered text, noise, flat colour. Near: cells of the other dataset's kind (drawn by the
synthetic generator: C-NMC's segmented cells on black for a 4-class model, smear-field cells for a
C-NMC one), and the model's own test cells under a strong stain shift, blur, or change of scale.
Every set is made from a fixed seed, so two evaluations probe with the same images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from skimage import data as photographs

from allcls.data.cell_drawing import STYLES, draw_cell
from allcls.data.images import read_image

PHOTOGRAPHS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "camera", "coins", "brick", "grass")
DOCUMENTS = ("page", "text")
CNMC_CLASSES = {"hem", "all"}
WORDS = ("Patient", "Invoice", "Total", "Date", "Specimen", "Report", "Haematology", "Sample", "Lab", "Result",
         "Signed", "Page", "Ref", "No.", "Amount", "2026")


@dataclass(frozen=True)
class ProbeSet:
    name: str
    kind: str  # "far" or "near"
    images: list[np.ndarray]


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


def _crops(rng: np.random.Generator, image: np.ndarray, count: int, size: int) -> list[np.ndarray]:
    """Square crops of random size (a quarter to all of the shorter side), resized to `size`."""
    height, width = image.shape[:2]
    crops = []
    for _ in range(count):
        side = int(rng.uniform(0.25, 1.0) * min(height, width))
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        crops.append(cv2.resize(image[top:top + side, left:left + side], (size, size), interpolation=cv2.INTER_AREA))
    return crops


def photograph_probes(rng: np.random.Generator, size: int, per_image: int) -> list[np.ndarray]:
    return [crop for name in PHOTOGRAPHS for crop in _crops(rng, _rgb(getattr(photographs, name)()), per_image, size)]


def document_probes(rng: np.random.Generator, size: int, count: int) -> list[np.ndarray]:
    """Crops of scanned pages, and lines of words rendered on paper-white."""
    scanned = [crop for name in DOCUMENTS for crop in _crops(rng, _rgb(getattr(photographs, name)()), count // 4, size)]
    font = ImageFont.load_default()
    rendered = []
    for _ in range(count - len(scanned)):
        page = Image.new("RGB", (size * 2, size * 2), tuple(int(v) for v in rng.integers(235, 256, 3)))
        draw = ImageDraw.Draw(page)
        for line in range(0, size * 2, 12):
            words = " ".join(rng.choice(WORDS, 4))
            draw.text((int(rng.integers(0, 8)), line), words, fill=(20, 20, 20), font=font)
        rendered.append(np.asarray(page.resize((size, size), Image.Resampling.BILINEAR)))
    return scanned + rendered


def noise_probes(rng: np.random.Generator, size: int, count: int) -> list[np.ndarray]:
    uniform = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count // 2)]
    smooth = [cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (0, 0), size / 16)
              for _ in range(count - count // 2)]
    return uniform + smooth


def flat_probes(rng: np.random.Generator, size: int, count: int) -> list[np.ndarray]:
    colours = [(0, 0, 0), (255, 255, 255), (128, 128, 128), (120, 80, 160)] + \
        [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(max(count - 4, 0))]
    return [np.full((size, size, 3), colour, dtype=np.uint8) for colour in colours[:count]]


def other_cells(rng: np.random.Generator, size: int, count: int, model_classes: Sequence[str]) -> list[np.ndarray]:
    """Cells of the other dataset's kind: smear-field 4-class cells for a C-NMC model, C-NMC's
    segmented cells on black for any other."""
    cnmc_model = set(model_classes) >= CNMC_CLASSES
    styles = [STYLES[c] for c in (("Benign", "Early", "Pre", "Pro") if cnmc_model else ("hem", "all"))]
    cells = []
    for k in range(count):
        stain = np.concatenate([rng.normal(1.0, 0.04, 3), rng.normal(0.0, 4.0, 3)])
        image, _ = draw_cell(rng, styles[k % len(styles)], size, stain, "smear" if cnmc_model else "black",
                             1.0 if cnmc_model else 1.6)
        cells.append(image)
    return cells


def _stain_shift(image: np.ndarray) -> np.ndarray:
    """Channels swapped and over-saturated: a stain no lab in the training data used."""
    shifted = image[..., ::-1].astype(np.float32)
    grey = shifted.mean(axis=-1, keepdims=True)
    return np.clip(grey + 1.8 * (shifted - grey), 0, 255).astype(np.uint8)


def _blur(image: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), max(image.shape[:2]) / 12)


def _rescale(image: np.ndarray) -> np.ndarray:
    """The middle third enlarged to the whole frame: a magnification three times the training one's."""
    height, width = image.shape[:2]
    middle = image[height // 3: 2 * height // 3, width // 3: 2 * width // 3]
    return cv2.resize(middle, (width, height), interpolation=cv2.INTER_LINEAR)


SHIFTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"stain shift": _stain_shift, "blur": _blur,
                                                          "scale x3": _rescale}


def probe_sets(own_cells: Sequence[str], model_classes: Sequence[str], per_set: int = 24, seed: int = 0
               ) -> list[ProbeSet]:
    """Every probe set, images at the size of the evaluated cells (`own_cells`: their files, of which
    the first `per_set` are shifted to make the near probes)."""
    rng = np.random.default_rng(seed)
    own = [read_image(path) for path in list(own_cells)[:per_set]]
    size = own[0].shape[0] if own else 64
    sets = [ProbeSet("photographs", "far", photograph_probes(rng, size, max(per_set // len(PHOTOGRAPHS), 1) + 1)),
            ProbeSet("documents", "far", document_probes(rng, size, per_set)),
            ProbeSet("noise", "far", noise_probes(rng, size, per_set)),
            ProbeSet("flat colour", "far", flat_probes(rng, size, min(per_set, 12))),
            ProbeSet("other dataset's cells", "near", other_cells(rng, size, per_set, model_classes))]
    sets += [ProbeSet(f"cells, {name}", "near", [shift(image) for image in own]) for name, shift in SHIFTS.items()]
    return sets
