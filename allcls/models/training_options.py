"""Training options from timm's train script, each off by default and one config key away
(`model.*` in conf/train.yaml): layer-wise learning-rate decay, mixup / cutmix, channels_last,
torch.compile."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from allcls.errors import AllclsError

log = logging.getLogger(__name__)

MIXUP_KEYS = ("mixup_alpha", "cutmix_alpha", "prob", "switch_prob")


def layer_decay_groups(model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
    """Parameter groups whose learning rates shrink by `layer_decay` per layer below the head
    (BEiT's layer-wise decay, as timm groups a model's layers); biases and norms get no weight decay.
    Each group carries its `lr_scale`: `scale_learning_rates` applies it once the optimiser exists.
    (`model.layer_decay` is range-checked with the other settings: allcls.config.ranges.)"""
    from timm.optim._param_groups import param_groups_layer_decay

    return param_groups_layer_decay(model, weight_decay=weight_decay, layer_decay=layer_decay)


def scale_learning_rates(optimizer: torch.optim.Optimizer) -> None:
    for group in optimizer.param_groups:
        group["lr"] *= group.get("lr_scale", 1.0)


def make_mixup(settings: Mapping[str, float], num_classes: int):
    """timm's Mixup for `model.mixup` ({mixup_alpha, cutmix_alpha, prob, switch_prob}): it mixes pairs
    of a batch's images and their one-hot labels. Label smoothing stays the loss's own
    (`model.label_smoothing`), so it is not applied twice."""
    from timm.data import Mixup

    unknown = sorted(set(settings) - set(MIXUP_KEYS))
    if unknown:
        raise AllclsError(f"model.mixup.{unknown[0]} is not a setting: model.mixup takes {list(MIXUP_KEYS)}.")
    values = {"mixup_alpha": 0.0, "cutmix_alpha": 0.0, "prob": 1.0, "switch_prob": 0.5, **settings}
    if values["mixup_alpha"] < 0 or values["cutmix_alpha"] < 0 or not 0 <= values["prob"] <= 1 \
            or not 0 <= values["switch_prob"] <= 1:
        raise AllclsError(f"model.mixup={dict(settings)} is out of range: the alphas take numbers of at least 0 "
                          "(0: off), prob and switch_prob fractions from 0 to 1.")
    if values["mixup_alpha"] == 0 and values["cutmix_alpha"] == 0:
        raise AllclsError("model.mixup sets neither mixup_alpha nor cutmix_alpha above 0: set one (e.g. 0.2), or "
                          "model.mixup=null for none.")
    return Mixup(mixup_alpha=values["mixup_alpha"], cutmix_alpha=values["cutmix_alpha"], prob=values["prob"],
                 switch_prob=values["switch_prob"], label_smoothing=0.0, num_classes=num_classes)


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class CompiledNetwork:
    """`torch.compile` of a network (`model.compile`), kept beside the module tree rather than in
    it, so checkpoints keep the network's own parameter names.

    Compiling happens at the first call (seconds to a minute). Where it cannot happen (no C++
    compiler for a CPU, no Triton for a GPU, a Python that torch.compile does not support, an
    operation its backend lacks), the error is one warning and the network runs as it is:
    `__call__` returns None from then on and the caller runs the plain network.
    """

    def __init__(self, network: nn.Module, mode: str = "default"):
        self.network, self.mode = network, mode
        try:
            self.compiled: Any = torch.compile(network, mode=mode)
        except RuntimeError as error:  # e.g. a Python version that torch.compile does not support yet
            self._fall_back(error)

    def __call__(self, images: torch.Tensor) -> torch.Tensor | None:
        if self.compiled is None:
            return None
        try:
            return self.compiled(images)
        except torch._dynamo.exc.TorchDynamoException as error:  # the backend failed (InductorError is one)
            self._fall_back(error)
            return None

    def _fall_back(self, error: BaseException) -> None:
        self.compiled = None
        reason = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        log.warning("model.compile: torch.compile cannot compile %s here (%s). Training goes on without it, at the "
                    "network's plain speed; set model.compile=false to leave it out.",
                    type(self.network).__name__, reason[:300])

    def __deepcopy__(self, memo) -> None:
        return None  # a copy of the model (EMA's average) runs the plain network
