"""Packaging's int8 option (`quantize=int8`): each member's ONNX graph quantised by ONNX Runtime's
static quantisation, its activations' ranges calibrated on the run's own validation cells, and the
cost measured on the test cells before the model may answer with it.

Never silent: packaging prints the test metrics of the graphs before and after, with their
intervals, and refuses (with the figures) when test balanced accuracy drops by more than
`quantize_max_drop`. The decision rule of an int8 model is fitted on the int8 graphs' own answers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from allcls.errors import AllclsError
from allcls.inference.members import Image, Member, prepared
from allcls.inference.onnx_runtime import INPUT

log = logging.getLogger(__name__)

CALIBRATION_CELLS = 256  # at most this many validation cells set the activations' ranges
COMPARED = ("balanced_accuracy", "f1_weighted", "auroc")  # what packaging reports before and after


def _batches(images: Sequence[Image], member: Member, size: int = 16) -> Iterator[dict[str, np.ndarray]]:
    """The calibration cells as the member's graph takes them, `size` at a time."""
    for start in range(0, len(images), size):
        chunk = images[start:start + size]
        yield {INPUT: np.stack([prepared(image, [member.preprocessing])[0] for image in chunk])}


def quantize_graphs(graphs: Sequence[Path], members: Sequence[Member], calibration: Sequence[Image],
                    folder: Path, seed: int = 0) -> list[Path]:
    """Each graph quantised to int8 (weights per channel, activations per tensor, QDQ), its ranges
    calibrated on at most CALIBRATION_CELLS of `calibration` (drawn with `seed`); the new graphs."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    rng = np.random.default_rng(seed)
    chosen = [calibration[i] for i in sorted(rng.choice(len(calibration), min(len(calibration), CALIBRATION_CELLS),
                                                        replace=False))]

    class Cells(CalibrationDataReader):
        def __init__(self, member: Member):
            self.batches = _batches(chosen, member)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    quantized = []
    for index, (graph, member) in enumerate(zip(graphs, members, strict=True)):
        optimised = folder / f"member_{index}.pre.onnx"  # folded and shape-inferred first, as ONNX Runtime advises
        quant_pre_process(str(graph), str(optimised), skip_symbolic_shape=True)
        target = folder / f"member_{index}.int8.onnx"
        quantize_static(str(optimised), str(target), Cells(member), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        quantized.append(target)
    return quantized


def compared(before: pd.DataFrame, after: pd.DataFrame) -> dict[str, dict[str, list[float]]]:
    """The metrics of COMPARED before and after (allcls.metrics.bootstrap.metric_table rows), each as
    [value, ci_low, ci_high]."""
    def row(table: pd.DataFrame, metric: str) -> list[float]:
        found = table.set_index("metric").loc[metric]
        return [float(found["value"]), float(found["ci_low"]), float(found["ci_high"])]
    return {metric: {"fp32": row(before, metric), "int8": row(after, metric)} for metric in COMPARED}


def lines(figures: dict[str, dict[str, list[float]]]) -> list[str]:
    """What packaging prints of the change, a metric a line."""
    return [f"{metric}: {f['fp32'][0]:.3f} [{f['fp32'][1]:.3f}, {f['fp32'][2]:.3f}] -> {f['int8'][0]:.3f} "
            f"[{f['int8'][1]:.3f}, {f['int8'][2]:.3f}] ({f['int8'][0] - f['fp32'][0]:+.3f})"
            for metric, f in figures.items()]


def check_drop(figures: dict[str, dict[str, list[float]]], max_drop: float) -> None:
    """Refuse int8 when test balanced accuracy drops by more than `max_drop`, with every figure."""
    before, after = figures["balanced_accuracy"]["fp32"][0], figures["balanced_accuracy"]["int8"][0]
    if before - after > max_drop:
        raise AllclsError(f"quantize=int8 costs {before - after:.3f} of test balanced accuracy, more than "
                          f"quantize_max_drop={max_drop}: " + "; ".join(lines(figures)) + ". Nothing was packaged: "
                          "package without quantize=int8, or allow more with quantize_max_drop=<share>.")
    for line in lines(figures):
        log.info("int8 on test: %s", line)
