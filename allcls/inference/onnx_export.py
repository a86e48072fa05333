"""Each member's network as an ONNX graph, for serving without torch (allcls.inference.onnx_runtime).

A member's graph takes what every runtime's shared preprocessing makes, uint8 images (N, H, W, 3)
with a dynamic batch axis, normalises them as training does (allcls.data.normalisation: the same
scale and shift, inside the graph), and returns the network's pooled features (what the
out-of-distribution gate reads) and its logits. One graph per member, not one for an ensemble: the
gate reads every member's features, members may see different input sizes, and on a CPU the
networks are the cost, not the calls (measured in benchmarks/serving.py).

Each graph is checked with `onnx.checker` when written, and `agreement` compares it with the torch
network on real cells: the largest difference of any probability and the share of labels that
agree, which packaging records in the model's spec and card.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from allcls.data.normalisation import Normalisation
from allcls.errors import AllclsError
from allcls.inference.members import Image, Member
from allcls.inference.onnx_runtime import FEATURES, INPUT, LOGITS, OnnxPredictor

OPSET = 18  # what ONNX Runtime 1.2x runs on every CPU


class _Graph(nn.Module):
    """uint8 images (N, H, W, 3) -> (pooled features, logits) of a timm network."""

    scale: torch.Tensor  # buffers: constants of the graph
    shift: torch.Tensor

    def __init__(self, network: nn.Module, normalisation: Normalisation):
        super().__init__()
        self.network = network
        self.register_buffer("scale", normalisation.scale.clone())
        self.register_buffer("shift", normalisation.shift.clone())

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.permute(0, 3, 1, 2).float() * self.scale + self.shift
        # timm types its models as bare nn.Module: torch reads the methods as a Tensor or Module
        feature_map = self.network.forward_features(x)  # type: ignore[operator]
        pooled = self.network.forward_head(feature_map, pre_logits=True)  # type: ignore[operator]
        return pooled.flatten(1), self.network.forward_head(feature_map)  # type: ignore[operator]


def export_member(network: nn.Module, member: Member, path: Path) -> Path:
    """Write `member`'s network as an ONNX graph at `path` (weights inside the file) and check it."""
    import onnx

    spec = member.preprocessing.spec
    graph = _Graph(network, Normalisation(spec)).eval().cpu()
    example = torch.zeros(2, spec.size, spec.size, 3, dtype=torch.uint8)
    # The TorchScript exporter (dynamo=False): 0.4 s for MobileNetV2 here, where torch.export's took 8 s
    # a member, on every packaging; its graphs pass the same checks (the checker, and `agreement`).
    # The exporter reports its progress through logging and warnings: not this command's to show.
    quiet = logging.getLogger("torch")
    level, quiet.level = quiet.level, logging.ERROR
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, (example,), str(path), input_names=[INPUT], output_names=[FEATURES, LOGITS],
                              dynamic_axes={INPUT: {0: "batch"}, FEATURES: {0: "batch"}, LOGITS: {0: "batch"}},
                              opset_version=OPSET, dynamo=False)
    except Exception as error:  # the exporter raises many kinds: each means this network cannot be exported
        raise AllclsError(f"Member {member.name} ({member.backbone}) could not be exported to ONNX "
                          f"({type(error).__name__}: {str(error)[:300]}): package with export=none.") from None
    finally:
        quiet.level = level
    onnx.checker.check_model(str(path), full_check=True)
    return path


def agreement(expected: np.ndarray, graphs: OnnxPredictor, images: Sequence[Image]) -> dict[str, float]:
    """How far the graphs' answers on `images` (files or decoded cells) are from the torch networks'
    (`expected`: each member's probabilities, members x images x classes): the largest absolute
    difference of any member's probability, and the share of images on which every member's label
    agrees; with the number of images."""
    got = graphs.outputs(images, desc="Checking the ONNX graphs", features=False).per_view[0]
    same = (expected.argmax(axis=2) == got.argmax(axis=2)).all(axis=0)
    return {"max_abs_difference": float(np.abs(expected - got).max()) if len(images) else 0.0,
            "label_agreement": float(same.mean()) if len(images) else 1.0, "cells": len(images)}
