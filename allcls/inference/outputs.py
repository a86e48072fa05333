"""What a model's networks make of images, whichever runtime runs them: torch
(allcls.inference.predictor.Predictor) or ONNX Runtime (allcls.inference.onnx_runtime.OnnxPredictor).
allcls.inference.model takes its answers from either through `Networks`, and imports neither."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from allcls.inference.combining import Rule, combine
from allcls.inference.members import Image, Member
from allcls.inference.views import PLAIN


@dataclass(frozen=True)
class Outputs:
    """What the members make of a batch of images: probabilities of every view (views, members,
    images, classes); and, where asked for, what the out-of-distribution gate reads of each member:
    the summary of its input (allcls.inference.ood.summarise_inputs), its pooled features (images,
    features) and its logits (images, classes) of the image as it is."""

    per_view: np.ndarray
    features: list[np.ndarray]
    logits: list[np.ndarray]
    inputs: list[np.ndarray]


class Networks(ABC):
    """A model's members run by one runtime (`runtime`: torch or onnx): their probabilities of every
    view, what the gate reads of them, and their combination with the members' weights."""

    runtime: str
    members: list[Member]
    classes: list[str]
    rule: Rule

    @abstractmethod
    def outputs(self, images: Sequence[Image], views: Sequence[str] = PLAIN, desc: str = "Predicting",
                show_progress: bool = True, features: bool = True) -> Outputs:
        """Every member's probabilities of every view (views, members, images, classes) and, with
        `features`, its pooled features and logits of the image as it is and the summary of its input
        (what the out-of-distribution gate reads), from one pass over the images."""

    @property
    def weights(self) -> np.ndarray:
        weights = np.array([m.weight for m in self.members], dtype=np.float64)
        return weights / weights.sum()

    def predict(self, images: Sequence[Image], views: Sequence[str] = PLAIN, desc: str = "Predicting") -> np.ndarray:
        """Probabilities (images, classes), rows summing to 1, of image files (paths) or decoded
        H x W x 3 uint8 RGB arrays, in their order, averaged over the test-time augmentation views."""
        return self.combine_views(list(self.view_probabilities(images, views, desc)))

    def combine_views(self, per_view: Sequence[np.ndarray]) -> np.ndarray:
        """The ensemble's probabilities (images, classes) from each view's member probabilities
        (members, images, classes): each member averaged over the views, then the members combined."""
        mean = np.asarray(sum(per_view) / len(per_view))  # (sum() of arrays is typed as array or 0)
        return combine(mean, self.weights, self.rule)

    def view_probabilities(self, images: Sequence[Image], views: Sequence[str] = PLAIN, desc: str = "Predicting",
                           show_progress: bool = True) -> np.ndarray:
        """Every member's probabilities of every view (views, members, images, classes), from one
        pass over the images."""
        return self.outputs(images, views, desc, show_progress, features=False).per_view
