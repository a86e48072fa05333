"""How one synthetic cell is drawn: a cytoplasm with a nucleus whose size, outline and chromatin
texture depend on the class (`STYLES`), stained, on C-NMC's black border or on a smear of red
cells like the 4-class dataset's. allcls.data.synthetic lays such cells out as a dataset."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


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
