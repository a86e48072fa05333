"""A model or an ensemble, with the preprocessing each member expects: images in, probabilities out.

Nothing here talks to MLflow: evaluation builds a Predictor from a run, an ensemble run or a
checkpoint (allcls.evaluation.sources), and serving can build one from whatever it loaded. Each
image is decoded once however many members and test-time augmentation views look at it, and
members that share a preprocessing share its result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from allcls.data.images import read_image
from allcls.data.transforms import InputSpec, build_transform
from allcls.inference.combining import combine
from allcls.inference.views import check_views, view_probabilities
from allcls.progress import progress


@dataclass(frozen=True)
class PredictorMember:
    """One model and how it sees an image: its backbone's input spec and the region-of-interest crop."""

    name: str
    model: nn.Module
    input_spec: InputSpec
    roi_crop: bool
    weight: float = 1.0

    @property
    def preprocessing(self) -> tuple[InputSpec, bool]:
        return self.input_spec, self.roi_crop


class _Inputs(Dataset):
    """Each image decoded once, then put through every distinct preprocessing."""

    def __init__(self, images: Sequence[str | np.ndarray], preprocessings: Sequence[tuple[InputSpec, bool]]):
        self.images = images
        self.transforms = [build_transform(spec, roi_crop) for spec, roi_crop in preprocessings]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        image = self.images[index]
        decoded = read_image(image) if isinstance(image, str) else image
        return tuple(transform(image=decoded)["image"] for transform in self.transforms)


class Predictor:
    """Class probabilities of images from one model or a weighted ensemble of models.

    `members` are combined with their weights (normalised to sum to 1) by `rule` (arithmetic,
    geometric, vote; allcls.ensemble.combining), after each member's probabilities are averaged
    over the test-time augmentation views.
    """

    def __init__(self, members: Sequence[PredictorMember], classes: Sequence[str], rule: str = "arithmetic",
                 device: torch.device | str = "cpu", batch_size: int = 64, num_workers: int = 0):
        if not members:
            raise ValueError("a Predictor needs at least one member")
        self.members = list(members)
        self.classes = list(classes)
        self.rule = rule
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.preprocessings = list(dict.fromkeys(m.preprocessing for m in self.members))
        # Moved here, not under inference mode: parameters converted there could not serve Grad-CAM's
        # backward pass. Channels-last: on the benchmarks' 2-core CPU the backbones predict 1.2x
        # (EfficientNet-Lite0) to 1.7x (MobileNetV2) faster in that layout, and a GPU's tensor cores want it.
        for member in self.members:
            member.model.to(self.device, memory_format=torch.channels_last)

    @property
    def weights(self) -> np.ndarray:
        weights = np.array([m.weight for m in self.members], dtype=np.float64)
        return weights / weights.sum()

    def predict(self, images: Sequence[str | np.ndarray], views: Sequence[str] = ("identity",),
                desc: str = "Predicting") -> np.ndarray:
        """Probabilities (images, classes), rows summing to 1, of image files (paths) or decoded
        H x W x 3 uint8 RGB arrays, in their order, averaged over the test-time augmentation views."""
        return self.combine_views(list(self.view_probabilities(images, views, desc)))

    def combine_views(self, per_view: Sequence[np.ndarray]) -> np.ndarray:
        """The ensemble's probabilities (images, classes) from each view's member probabilities
        (members, images, classes): each member averaged over the views, then the members combined."""
        return combine(sum(per_view) / len(per_view), self.weights, self.rule)

    @torch.inference_mode()
    def view_probabilities(self, images: Sequence[str | np.ndarray], views: Sequence[str] = ("identity",),
                           desc: str = "Predicting", show_progress: bool = True) -> np.ndarray:
        """Every member's probabilities of every view (views, members, images, classes), from one
        pass over the images."""
        views = check_views(views)
        self.ready()
        chunks: list[list[list[np.ndarray]]] = [[[] for _ in self.members] for _ in views]
        label = f"{desc}: {len(images)} images x {len(self.members)} model(s) x {len(views)} view(s)"
        with progress(desc=label, total=len(images), unit="image", show=show_progress) as bar:
            for batch in self.loader(images):
                for m, member in enumerate(self.members):
                    inputs = self.to_device(batch[self.preprocessings.index(member.preprocessing)])
                    for v, view in enumerate(views):
                        chunks[v][m].append(view_probabilities(member.model, inputs, [view]).cpu().numpy())
                bar.update(len(batch[0]))
        empty = np.zeros((0, len(self.classes)))
        return np.array([[np.concatenate(chunk) if chunk else empty for chunk in per_view] for per_view in chunks])

    @torch.inference_mode()
    def features(self, images: Sequence[str | np.ndarray], desc: str = "Features") -> list[np.ndarray]:
        """Each member's features of the images (what its classifier head sees), one (images,
        features) array per member."""
        self.ready()
        chunks: list[list[np.ndarray]] = [[] for _ in self.members]
        with progress(desc=f"{desc}: {len(images)} images x {len(self.members)} model(s)", total=len(images),
                      unit="image") as bar:
            for batch in self.loader(images):
                for chunk, member in zip(chunks, self.members):
                    inputs = self.to_device(batch[self.preprocessings.index(member.preprocessing)])
                    pooled = member.model.forward_head(member.model.forward_features(inputs), pre_logits=True)
                    chunk.append(pooled.flatten(1).double().cpu().numpy())
                bar.update(len(batch[0]))
        return [np.concatenate(chunk) for chunk in chunks]

    def ready(self) -> None:
        for member in self.members:
            member.model.eval()

    def to_device(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs.to(self.device, memory_format=torch.channels_last, non_blocking=True)

    def loader(self, images: Sequence[str | np.ndarray]) -> DataLoader:
        """Batches of every preprocessing's tensors of `images`, in order."""
        return DataLoader(_Inputs(images, self.preprocessings), batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers, pin_memory=self.device.type == "cuda")

    def inputs(self, images: Sequence[str | np.ndarray], member: PredictorMember) -> torch.Tensor:
        """The tensors `member` sees for `images` (N, 3, H, W), e.g. to explain them."""
        dataset = _Inputs(images, [member.preprocessing])
        return torch.stack([dataset[i][0] for i in range(len(dataset))])
