"""A model or an ensemble, with the preprocessing each member expects: images in, probabilities out.

Nothing here talks to MLflow or Lightning: evaluation builds a Predictor from a run, an ensemble run
or a checkpoint (allcls.evaluation.sources), the served model from its package. Each image is
decoded once however many members and test-time augmentation views look at it, members that share
a preprocessing share its result, and what travels to the device is the uint8 image that training's
loaders carry too, normalised there as training normalises it (allcls.data.preprocessing).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from allcls.data.normalisation import Normalisation
from allcls.inference.combining import Rule
from allcls.inference.members import Image, Member, Preprocessing, prepared
from allcls.inference.outputs import Networks
from allcls.inference.views import PLAIN, view_probabilities


class _Inputs(Dataset):
    """Each image decoded once, then cropped and resized for every distinct preprocessing: a tuple
    of uint8 H x W x 3 tensors, one per preprocessing."""

    def __init__(self, images: Sequence[Image], preprocessings: Sequence[Preprocessing]):
        self.images = images
        self.preprocessings = preprocessings

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(array) for array in prepared(self.images[index], self.preprocessings))


def _features_and_logits(network: nn.Module, inputs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """A timm network's pooled features (what its classifier sees) and logits, from one forward pass."""
    # timm types its models as bare nn.Module: torch reads the methods as a Tensor or Module
    feature_map = network.forward_features(inputs)  # type: ignore[operator]
    pooled = network.forward_head(feature_map, pre_logits=True)  # type: ignore[operator]
    logits = network.forward_head(feature_map)  # type: ignore[operator]
    return pooled.flatten(1).double().cpu().numpy(), logits.double().cpu().numpy()


class Predictor(Networks):
    """Class probabilities of images from one network or a weighted ensemble of networks.

    `members[i]` describes `networks[i]`. The members are combined with their weights (normalised
    to sum to 1) by `rule` (allcls.inference.combining), after each member's probabilities are
    averaged over the test-time augmentation views.
    """

    runtime = "torch"

    def __init__(self, members: Sequence[Member], networks: Sequence[nn.Module], classes: Sequence[str],
                 rule: Rule = "arithmetic", device: torch.device | str = "cpu", batch_size: int = 64,
                 num_workers: int = 0):
        if not members or len(members) != len(networks):
            raise ValueError("a Predictor needs one network per member, and at least one member")
        self.members = list(members)
        self.networks = list(networks)
        self.classes = list(classes)
        self.rule = rule
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.preprocessings = list(dict.fromkeys(m.preprocessing for m in self.members))
        self.normalisations = {p: Normalisation(p.spec) for p in self.preprocessings}
        # Moved here, not under inference mode: parameters converted there could not serve Grad-CAM's
        # backward pass. Channels-last: on the benchmarks' 2-core CPU the backbones predict 1.2x
        # (EfficientNet-Lite0) to 1.7x (MobileNetV2) faster in that layout, and a GPU's tensor cores want it.
        for network in self.networks:
            # torch's overloads of Module.to leave out (device, memory_format=...), which it accepts
            network.to(self.device, memory_format=torch.channels_last)  # type: ignore[call-overload]

    def batches(self, images: Sequence[Image]) -> Iterable[Sequence[torch.Tensor]]:
        self.ready()
        return self.loader(images)

    @torch.inference_mode()
    def member_outputs(self, member: int, resized: torch.Tensor, views: Sequence[str], features: bool
                       ) -> tuple[list[np.ndarray], np.ndarray | None, np.ndarray | None]:
        network = self.networks[member]
        inputs = self.network_input(resized, self.members[member].preprocessing)
        own, head = _features_and_logits(network, inputs) if features else (None, None)
        # The image as it is: its probabilities from the logits just computed, where there are some.
        probabilities = [torch.from_numpy(head).softmax(dim=1).numpy() if head is not None and view == "identity"
                         else view_probabilities(network, inputs, [view]).cpu().numpy() for view in views]
        return probabilities, own, head

    def features(self, images: Sequence[Image], desc: str = "Features") -> list[np.ndarray]:
        """Each member's features of the images (what its classifier head sees), one (images,
        features) array per member."""
        return self.outputs(images, PLAIN, desc).features

    def ready(self) -> None:
        for network in self.networks:
            network.eval()

    def network_input(self, resized: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
        """The network's input from uint8 images (N, H, W, 3): moved to the device, normalised
        there and laid out channels-last."""
        images = resized.to(self.device, non_blocking=True)
        normalised = self.normalisations[preprocessing](Normalisation.channels_first(images))
        return normalised.contiguous(memory_format=torch.channels_last)

    def loader(self, images: Sequence[Image]) -> DataLoader:
        """Batches of every preprocessing's uint8 images of `images`, in order."""
        return DataLoader(_Inputs(images, self.preprocessings), batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers, pin_memory=self.device.type == "cuda")

    def inputs(self, images: Sequence[Image], member: int) -> tuple[np.ndarray, torch.Tensor]:
        """What member `member` sees of `images`: the images as RGB in [0, 1] (N, H, W, 3), and its
        input tensor on the device (N, 3, H, W), e.g. to explain them."""
        preprocessing = self.members[member].preprocessing
        resized = torch.stack([_Inputs(images, [preprocessing])[i][0] for i in range(len(images))])
        return resized.numpy().astype(np.float32) / 255, self.network_input(resized, preprocessing)
