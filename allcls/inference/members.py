"""A member of a model: one trained network, with the weight the combining rule gives it and how it
sees an image. A single run is a model of one member; an ensemble has several. Evaluation, ensembles,
packaging, batch prediction and the page all describe members with this one type."""

from __future__ import annotations

from dataclasses import dataclass

from allcls.data.preprocessing import InputSpec


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
