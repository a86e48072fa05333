"""Packaging's export step: each member's network as an ONNX graph (allcls.inference.onnx_export),
checked against the torch networks on the run's validation cells, quantised to int8 where asked
(allcls.serving.quantize), and the runtime the packaged model answers with by default.

Graphs that disagree with their networks (a label changed on more than `MIN_AGREEMENT`'s share of
the validation cells, or a probability off by more than `MAX_DIFFERENCE`) are kept for whoever
wants to look, but the model then answers with torch by default, and packaging says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from allcls.evaluation.safeguards import SplitOutputs
from allcls.inference.onnx_export import OPSET, agreement, export_member
from allcls.inference.onnx_runtime import OnnxPredictor
from allcls.inference.outputs import Networks
from allcls.inference.predictor import Predictor
from allcls.inference.spec import ModelSpec
from allcls.serving.quantize import quantize_graphs

log = logging.getLogger(__name__)

MAX_DIFFERENCE = 1e-3  # of a probability, between a graph and its network (fp32 graphs differ by ~1e-6)
MIN_AGREEMENT = 0.995  # share of validation cells on which every member's label is the same


@dataclass(frozen=True)
class Exported:
    """The graphs as artifacts (`onnx_<i>`), the spec's `export` entry, and warnings for the card;
    `quantized`: the int8 graphs' runtime, which then answers for the model (its rule is fitted on it)."""

    artifacts: dict[str, str] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    quantized: Networks | None = None


def export_graphs(predictor: Predictor, validation: SplitOutputs, workdir: Path, runtime: str,
                  quantize: str = "none", seed: int = 0) -> Exported:
    """Every member of `predictor` as a checked ONNX graph in `workdir`, compared with its torch
    network on the validation cells (`validation`: the torch networks' answers on them); `runtime`:
    the default asked for (onnx or torch); with `quantize=int8`, the graphs quantised (calibrated on
    the validation cells) replace them, and answer."""
    graphs = [export_member(network, member, workdir / f"member_{index}.onnx")
              for index, (network, member) in enumerate(zip(predictor.networks, predictor.members, strict=True))]
    cells, expected = validation.samples.paths, validation.members
    assert expected is not None  # predicted here, not read from a table

    def runtime_of(graphs: Sequence[Path]) -> OnnxPredictor:
        return OnnxPredictor(predictor.members, graphs, predictor.classes, predictor.rule)

    checked = agreement(expected, runtime_of(graphs), cells)
    if quantize == "int8":
        answering = runtime_of(quantize_graphs(graphs, predictor.members, cells, workdir, seed))
        int8 = agreement(expected, answering, cells)
        artifacts = {ModelSpec.graph_key(index): str(graph) for index, graph in enumerate(answering.graphs)}
        spec = {"format": "onnx", "opset": OPSET, **checked, "quantized": "int8",
                "int8_label_agreement": int8["label_agreement"],
                "int8_max_abs_difference": int8["max_abs_difference"], "runtime": "onnx"}
        return Exported(artifacts, spec, [], answering)
    warnings = []
    if checked["label_agreement"] < MIN_AGREEMENT or checked["max_abs_difference"] > MAX_DIFFERENCE:
        warnings.append(f"The ONNX graphs disagree with the torch networks on the validation cells (labels agree on "
                        f"{checked['label_agreement']:.1%}, probabilities differ by up to "
                        f"{checked['max_abs_difference']:.2g}): the model answers with torch by default.")
        runtime = "torch"
    for warning in warnings:
        log.warning(warning)
    artifacts = {ModelSpec.graph_key(index): str(graph) for index, graph in enumerate(graphs)}
    return Exported(artifacts, {"format": "onnx", "opset": OPSET, **checked, "runtime": runtime}, warnings)
