"""What a model's networks make of images, whichever runtime runs them: torch
(allcls.inference.predictor.Predictor) or ONNX Runtime (allcls.inference.onnx_runtime.OnnxPredictor).
allcls.inference.model takes its answers from either through `Networks`, and imports neither."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from allcls.inference.combining import Rule, combine
from allcls.inference.members import Image, Member, Preprocessing
from allcls.inference.ood import summarise_inputs
from allcls.inference.views import PLAIN, check_views
from allcls.progress import progress


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
    preprocessings: list[Preprocessing]  # the members' distinct ones, in the order `batches` yields them

    @abstractmethod
    def batches(self, images: Sequence[Image]) -> Iterable[Sequence[Any]]:
        """Batches of `images`: for each of `preprocessings`, the uint8 images (N, H, W, 3) it makes
        (arrays, or tensors on the CPU)."""

    @abstractmethod
    def member_outputs(self, member: int, resized: Any, views: Sequence[str], features: bool
                       ) -> tuple[list[np.ndarray], np.ndarray | None, np.ndarray | None]:
        """Member `member` on its uint8 images `resized`: its probabilities of each view (float64,
        images x classes) and, with `features`, its pooled features and logits (float64) of the
        images as they are (else None)."""

    def outputs(self, images: Sequence[Image], views: Sequence[str] = PLAIN, desc: str = "Predicting",
                show_progress: bool = True, features: bool = True) -> Outputs:
        """Every member's probabilities of every view (views, members, images, classes) and, with
        `features`, its pooled features and logits of the image as it is and the summary of its input
        (what the out-of-distribution gate reads), from one pass over the images."""
        views = check_views(views)
        chunks: list[list[list[np.ndarray]]] = [[[] for _ in self.members] for _ in views]
        pooled: list[list[np.ndarray]] = [[] for _ in self.members]
        logits: list[list[np.ndarray]] = [[] for _ in self.members]
        shown: list[list[np.ndarray]] = [[] for _ in self.members]
        label = f"{desc}: {len(images)} images x {len(self.members)} model(s) x {len(views)} view(s)"
        with progress(desc=label, total=len(images), unit="image", show=show_progress) as bar:
            for batch in self.batches(images):
                for m, member in enumerate(self.members):
                    resized = batch[self.preprocessings.index(member.preprocessing)]
                    probabilities, own, head = self.member_outputs(m, resized, views, features)
                    for v, view_probabilities in enumerate(probabilities):
                        chunks[v][m].append(view_probabilities)
                    if features:
                        assert own is not None and head is not None  # asked for
                        shown[m].append(summarise_inputs(np.asarray(resized)))
                        pooled[m].append(own)
                        logits[m].append(head)
                bar.update(len(batch[0]))
        empty = np.zeros((0, len(self.classes)))
        per_view = np.array([[np.concatenate(chunk) if chunk else empty for chunk in view] for view in chunks])
        if not features:
            return Outputs(per_view, [], [], [])
        join = lambda chunks: [np.concatenate(chunk) if chunk else np.zeros((0, 0)) for chunk in chunks]  # noqa: E731
        return Outputs(per_view, join(pooled), join(logits), join(shown))

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
