"""A member of a model: one trained network, with the weight the combining rule gives it and how it
sees an image. A single run is a model of one member; an ensemble has several. Evaluation, ensembles,
packaging, batch prediction and the page all describe members with this one type."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from allcls.data.images import read_image
from allcls.data.preprocessing import InputSpec, preprocess

Image = str | np.ndarray  # a file's path, or an H x W x 3 uint8 RGB array already decoded


@dataclass(frozen=True)
class Preprocessing:
    """How a network sees an image: [crop to the cell (`roi_crop`)] -> resize and normalise as its
    backbone expects (`spec`). Members with equal preprocessing share one pass over the images."""

    spec: InputSpec
    roi_crop: bool = False


@dataclass(frozen=True)
class Member:
    """One trained network of a model: its name, its weight in the combining rule (the model's
    weights are normalised to sum to 1), its backbone (timm's name) and its preprocessing."""

    name: str
    weight: float
    backbone: str
    preprocessing: Preprocessing


def prepared(image: Image, preprocessings: Sequence[Preprocessing]) -> tuple[np.ndarray, ...]:
    """An image decoded once (unless it already is), then cropped and resized for each of the
    distinct `preprocessings`: uint8 size x size x 3 arrays, what every runtime feeds its networks."""
    decoded = read_image(image) if isinstance(image, str) else image
    return tuple(preprocess(decoded, p.spec, p.roi_crop) for p in preprocessings)
