"""Training options from timm's train script, each off by default and one config key away
(`model.*` in conf/train.yaml): layer-wise learning-rate decay, mixup / cutmix, channels_last."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from allcls.errors import AllclsError

MIXUP_KEYS = ("mixup_alpha", "cutmix_alpha", "prob", "switch_prob")


def layer_decay_groups(model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
    """Parameter groups whose learning rates shrink by `layer_decay` per layer below the head
    (BEiT's layer-wise decay, as timm groups a model's layers); biases and norms get no weight decay.
    Each group carries its `lr_scale`: `scale_learning_rates` applies it once the optimiser exists.
    (`model.layer_decay` is range-checked with the other settings: allcls.ranges.)"""
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
