"""The backbone factory: any timm model (or our `custom_cnn`) by name, with ImageNet weights from
timm's hub or from a local file, and the input size and normalisation that the backbone expects."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

import allcls.models.custom_cnn  # noqa: F401  (registers custom_cnn with timm)
from allcls.config.sections import typed
from allcls.data.preprocessing import InputSpec
from allcls.errors import AllclsError
from allcls.models.checkpoints import load_weights, read_checkpoint
from allcls.models.weights import load_weights_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneSpec:
    """A `backbone` config section (conf/backbone/*.yaml). The model side: `name` (a timm model),
    `pretrained` (ImageNet weights: from the local file `weights` when given, else timm's hub),
    `drop_rate`. The input side, each None for the backbone's own (timm's pretrained config):
    `input_size` (square side), `mean` and `std` (normalisation)."""

    name: str
    pretrained: bool = False
    weights: str | None = None
    drop_rate: float = 0.0
    input_size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    @classmethod
    def of(cls, backbone: BackboneSpec | Mapping[str, Any]) -> BackboneSpec:
        return backbone if isinstance(backbone, BackboneSpec) else typed(cls, backbone, "backbone")

    def as_dict(self) -> dict[str, Any]:
        """Plain values, as a checkpoint stores them (it loads with weights_only=True)."""
        return asdict(self)


def check_backbone_name(name: str) -> str:
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        raise AllclsError(
            f"Unknown backbone {name!r}: it is not a timm model name. "
            + (f"Did you mean {' or '.join(close)}? " if close else "")
            + "Pick a config in conf/backbone/ (backbone=mobilenetv2) or a name from timm.list_models().")
    return name


def create_backbone(spec: BackboneSpec, num_classes: int) -> nn.Module:
    """A timm model with a `num_classes` head.

    `spec.pretrained` loads ImageNet weights: from the local file `spec.weights` when given
    (offline machines; it must use timm's key names, see `allcls-weights`), else
    from timm's hub. The classifier is new unless it has ImageNet's 1000 classes.
    """
    name, drop_rate = check_backbone_name(spec.name), spec.drop_rate
    if not spec.pretrained:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, drop_rate=drop_rate)
    if spec.weights:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, drop_rate=drop_rate)
        head_loaded = load_weights_file(model, spec.weights)
    else:
        model = _from_hub(name, num_classes, drop_rate)
        hub_cfg = timm.get_pretrained_cfg(name)
        assert hub_cfg is not None  # _from_hub refuses a model without one
        head_loaded = num_classes == hub_cfg.num_classes
    if not head_loaded:
        reset_classifier(model)
    return model


def network_from_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """The trained network inside a training checkpoint (`best.ckpt`), without Lightning: what
    serving loads (weights_only=True; nothing pretrained is fetched, the checkpoint has every weight)."""
    checkpoint = read_checkpoint(path, map_location)
    hparams = checkpoint["hyper_parameters"]
    spec = BackboneSpec.of({**hparams["backbone"], "pretrained": False})
    classes = list(hparams["class_names"])
    model = create_backbone(spec, num_classes=len(classes))
    network = {key.removeprefix("model."): value for key, value in checkpoint["state_dict"].items()
               if key.startswith("model.")}
    load_weights(model, network, path, f"a {spec.name} with classes {classes}")
    return model


def reset_classifier(model: nn.Module) -> None:
    """Give the new head PyTorch's default initialisation.

    timm initialises the EfficientNet family's head (MobileNetV2, EfficientNet-B3, ...) with weights
    of range 1/sqrt(num_classes): for 4 classes that is ~20x larger than a fresh nn.Linear. On
    pretrained features this made fine-tuning noisier and cost accuracy against a plain
    torchvision script (benchmarks/aria_transfer.py); a fresh nn.Linear's scale does not.
    """
    # timm types its models as bare nn.Module: torch reads the method as a Tensor or Module
    for module in model.get_classifier().modules():  # type: ignore[operator]
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()


def _from_hub(name: str, num_classes: int, drop_rate: float) -> nn.Module:
    cfg = timm.get_pretrained_cfg(name)
    if not (cfg and (cfg.url or cfg.hf_hub_id)):
        raise AllclsError(f"{name} has no ImageNet weights to download: set backbone.pretrained=false "
                          "or give a weights file in backbone.weights.")
    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes, drop_rate=drop_rate)
    except Exception as error:  # hub and network failures come in many types
        raise AllclsError(
            f"Could not fetch ImageNet weights for {name} from timm's hub ({type(error).__name__}: {error}). "
            "On an offline machine set backbone.weights=/path/to/weights.pth (timm key names; "
            "`allcls-weights` converts other layouts) or backbone.pretrained=false."
        ) from None


def input_spec(spec: BackboneSpec) -> InputSpec:
    """What the backbone expects as input (timm's pretrained config), with the config's overrides."""
    cfg = timm.get_pretrained_cfg(check_backbone_name(spec.name))
    default_size = cfg.input_size[-1] if cfg else 224
    size = int(spec.input_size or default_size)
    if size < 16:
        raise AllclsError(f"backbone.input_size={size} is too small: use 16 pixels or more.")
    return InputSpec(
        size=size,
        mean=_rgb(spec.mean or (cfg.mean if cfg else timm.data.IMAGENET_DEFAULT_MEAN), "backbone.mean"),
        std=_rgb(spec.std or (cfg.std if cfg else timm.data.IMAGENET_DEFAULT_STD), "backbone.std"),
    )


def _rgb(values: Sequence[float], where: str) -> tuple[float, float, float]:
    """One value per colour channel (R, G, B), or the user error naming `where`."""
    if len(values) != 3:
        raise AllclsError(f"{where}={list(values)} needs one value per colour channel: three (R, G, B).")
    return float(values[0]), float(values[1]), float(values[2])
