"""Grad-CAM that a person can read: each map laid back onto the image exactly as it was uploaded
(the crop and resize a member applied, undone), drawn semi-transparent in a perceptually uniform
colour map with the region that matters outlined, and, for an ensemble, the members' agreement in
words ("3 of 4 members look at the nucleus").

Where the maps look is said in three words of the cell's anatomy: the nucleus is the darkest
stained part of the cell (Otsu's threshold on the cell's grey levels; May-Grünwald-Giemsa and
Wright stain nuclei dark purple), the cytoplasm is the rest of the cell, the background what is
black around a segmented cell (or nothing, for a smear field). A rough guide, said as such.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from allcls.data.preprocessing import foreground_square
from allcls.inference.gradcam import member_maps
from allcls.inference.members import Preprocessing
from allcls.inference.predictor import Predictor

REGION = 0.5  # the region that matters: where the map is at least half its peak
OPACITY = 0.6  # of the colour where the map peaks; it fades with the map, so weak areas show the image
PLACES = ("nucleus", "cytoplasm", "background")


@dataclass(frozen=True)
class Explanation:
    """One image's maps in its own frame (H, W, in [0, 1]): the ensemble's, each member's, and
    where each looks (one of PLACES)."""

    combined: np.ndarray
    members: dict[str, np.ndarray]
    places: dict[str, str]  # member -> where its region lies
    place: str  # where the combined map's region lies

    def agreement(self) -> str:
        """The members' agreement in words, e.g. "3 of 4 members look at the nucleus"."""
        if len(self.members) < 2:
            return f"The model looks mostly at the {self.place}."
        same = [m for m, place in self.places.items() if place == self.place]
        others = sorted({place for place in self.places.values() if place != self.place})
        text = f"{len(same)} of {len(self.members)} members look mostly at the {self.place}"
        return text + (f"; the others at the {' and the '.join(others)}." if others else ".")

    @property
    def disagree(self) -> bool:
        return len(set(self.places.values())) > 1


def to_image_frame(cam: np.ndarray, shape: tuple[int, ...], preprocessing: Preprocessing,
                   image: np.ndarray) -> np.ndarray:
    """A member's map (h, w) of the image it saw, laid onto the uploaded `image` (of `shape`):
    the crop to the cell and the resize undone, zero outside what the member saw."""
    height, width = shape[:2]
    square = foreground_square(image) if preprocessing.roi_crop else None
    if square is None:  # resized as a whole (stretched to a square)
        return cv2.resize(cam, (width, height), interpolation=cv2.INTER_LINEAR)
    top, left, side = square
    canvas = np.zeros((height, width), np.float32)
    grown = cv2.resize(cam, (side, side), interpolation=cv2.INTER_LINEAR)
    rows, columns = slice(max(top, 0), min(top + side, height)), slice(max(left, 0), min(left + side, width))
    canvas[rows, columns] = grown[rows.start - top:rows.stop - top, columns.start - left:columns.stop - left]
    return canvas


CHUNK = 16  # images per Grad-CAM pass: a backward pass holds every activation of its batch


def explain_images(predictor: Predictor, images: Sequence[np.ndarray], targets: Sequence[int]
                   ) -> list[Explanation]:
    """The maps of `targets[i]` for each decoded image (H x W x 3 uint8; one Grad-CAM pass per member
    for up to CHUNK images), each member's in its image's frame, combined with the predictor's
    weights; kept as float16 (what is drawn needs no more, and a page keeps many)."""
    explained = []
    for start in range(0, len(images), CHUNK):
        chunk = images[start:start + CHUNK]
        _, maps = member_maps(predictor, chunk, targets[start:start + CHUNK], show=False)
        for index, image in enumerate(chunk):
            framed = {member.name: to_image_frame(member_map[index], image.shape, member.preprocessing, image)
                      for member, member_map in zip(predictor.members, maps, strict=True)}
            combined = np.asarray(sum(w * m for w, m in zip(predictor.weights, framed.values(), strict=True)),
                                  np.float32)
            peak = float(combined.max())
            combined = combined / peak if peak > 0 else combined
            parts = cell_parts(image)
            places = {name: place_of(member_map, parts) for name, member_map in framed.items()}
            explained.append(Explanation(combined.astype(np.float16),
                                         {name: m.astype(np.float16) for name, m in framed.items()}, places,
                                         place_of(combined, parts)))
    return explained


def cell_parts(image: np.ndarray) -> dict[str, np.ndarray]:
    """Masks of the nucleus, the cytoplasm and the background of a cell image (see the module's note)."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    cell = image.max(axis=2) > 10
    if cell.mean() > 0.98:  # a smear field, not a segmented cell: no background to speak of
        cell[:] = True
    inside = grey[cell]
    if inside.size == 0 or int(inside.max()) == int(inside.min()):
        return {"nucleus": np.zeros_like(cell), "cytoplasm": cell, "background": ~cell}
    threshold, _ = cv2.threshold(inside.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    nucleus = cell & (grey <= threshold)
    return {"nucleus": nucleus, "cytoplasm": cell & ~nucleus, "background": ~cell}


def place_of(cam: np.ndarray, parts: dict[str, np.ndarray]) -> str:
    """Which part holds most of the map's region that matters."""
    peak = float(cam.max())
    region = cam >= REGION * peak if peak > 0 else np.zeros(cam.shape, bool)
    counts = {name: int((region & parts[name]).sum()) for name in PLACES}
    return max(PLACES, key=lambda name: counts[name])


def draw(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """The map over the image (uint8 RGB, the image's size): viridis (perceptually uniform, readable
    in grey and by the colour-blind), its opacity rising with the map so that the image shows where
    the map is weak, the region that matters outlined in white. pytorch-grad-cam's
    `show_cam_on_image` tints the whole image at one opacity, which hides the cell under a uniform
    wash: hence this one."""
    cam = np.asarray(cam, np.float32)
    heat = cv2.cvtColor(cv2.applyColorMap((255 * np.clip(cam, 0, 1)).astype(np.uint8), cv2.COLORMAP_VIRIDIS),
                        cv2.COLOR_BGR2RGB).astype(np.float32)
    alpha = (OPACITY * np.clip(cam, 0, 1))[..., None]
    blended = (1 - alpha) * image.astype(np.float32) + alpha * heat
    drawn = np.ascontiguousarray(blended.round().clip(0, 255).astype(np.uint8))
    region = (cam >= REGION * float(cam.max())).astype(np.uint8) if cam.max() > 0 else np.zeros(cam.shape, np.uint8)
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(drawn, contours, -1, (255, 255, 255), max(1, round(max(image.shape[:2]) / 150)),
                     lineType=cv2.LINE_AA)
    return drawn


def thumbnails(images: Sequence[np.ndarray], side: int = 160) -> list[np.ndarray]:
    """Images shrunk (never grown) so their longer side is at most `side` px, for a gallery."""
    shrunk = []
    for image in images:
        scale = side / max(image.shape[:2])
        shrunk.append(image if scale >= 1 else cv2.resize(image, (round(image.shape[1] * scale),
                                                                  round(image.shape[0] * scale)),
                                                          interpolation=cv2.INTER_AREA))
    return shrunk
