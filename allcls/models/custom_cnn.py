"""A small plain CNN (conv -> batch norm -> ReLU -> max-pool blocks), registered in timm's model
registry as ``custom_cnn`` so that it is built by name like every other backbone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model
from torch import nn


class CustomCNN(nn.Module):
    """`len(channels)` blocks of two 3x3 convolutions and a 2x2 max-pool, then global average
    pooling, dropout and a linear classifier. Works at any input size of 2**len(channels) or more."""

    pretrained_cfg: dict[str, Any]  # timm's pretrained config of the model, set by `custom_cnn` below

    def __init__(self, num_classes: int = 2, in_chans: int = 3, channels: Sequence[int] = (32, 64, 128, 256),
                 drop_rate: float = 0.0, **_: object):
        super().__init__()
        blocks, width = [], in_chans
        for out in channels:
            blocks += [
                nn.Conv2d(width, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                nn.Conv2d(out, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            width = out
        self.features = nn.Sequential(*blocks)
        self.num_classes, self.num_features = num_classes, width
        self.head_drop = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(width, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x.mean(dim=(2, 3)))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# timm reads `default_cfgs` of the module that registers a model: this gives custom_cnn a
# pretrained config (input size, normalisation) like every timm model, but no weights to download.
default_cfgs = generate_default_cfgs({
    "custom_cnn": {
        "input_size": (3, 128, 128), "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "classifier": "classifier", "first_conv": "features.0", "num_classes": 2,
    },
})


@register_model
def custom_cnn(pretrained: bool = False, **kwargs) -> CustomCNN:
    model = CustomCNN(**kwargs)
    model.pretrained_cfg = dict(default_cfgs["custom_cnn"].default.to_dict())
    return model
