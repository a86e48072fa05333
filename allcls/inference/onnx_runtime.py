"""A packaged model's members run by ONNX Runtime: images in, the same outputs as the torch
predictor (allcls.inference.predictor) out, without importing torch.

Each member's graph (written by allcls.inference.onnx_export) takes the uint8 images (N, H, W, 3)
that every runtime's shared preprocessing makes (allcls.inference.members.prepared: decode, crop to
the cell, resize), normalises them inside the graph as training does, and returns the network's
pooled features and logits; probabilities are the logits' softmax in float64, as the torch
predictor computes them. Test-time augmentation views turn the uint8 arrays (ARRAY_VIEWS), the same
turns the torch predictor makes of its tensors. The next batch is decoded in a thread while the
graphs run (decoding and ONNX Runtime both release the GIL).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from allcls.errors import AllclsError
from allcls.inference.combining import Rule
from allcls.inference.members import Image, Member, prepared
from allcls.inference.outputs import Networks
from allcls.inference.views import ARRAY_VIEWS

INPUT, FEATURES, LOGITS = "images", "features", "logits"  # the graphs' names (allcls.inference.onnx_export)


def session(graph: str | Path, threads: int | None = None):
    """An ONNX Runtime session of one graph on the CPU, with every graph optimisation; `threads`:
    its intra-op threads (default: the cores this process may use)."""
    try:
        import onnxruntime as ort
    except ImportError as error:
        raise AllclsError("runtime=onnx needs onnxruntime: pip install onnxruntime (or runtime=torch).") from error
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    options.intra_op_num_threads = threads or cores
    options.log_severity_level = 3  # errors only: its warnings about unused initialisers are not the user's
    return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (what the torch predictor's `.double().softmax(1)` gives)."""
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


class OnnxPredictor(Networks):
    """The torch Predictor's `outputs` (and what allcls.inference.model needs of it) from ONNX graphs:
    `members[i]` is run by `graphs[i]`."""

    runtime = "onnx"

    def __init__(self, members: Sequence[Member], graphs: Sequence[str | Path], classes: Sequence[str],
                 rule: Rule = "arithmetic", batch_size: int = 16, threads: int | None = None):
        if not members or len(members) != len(graphs):
            raise ValueError("an OnnxPredictor needs one graph per member, and at least one member")
        self.members = list(members)
        self.classes = list(classes)
        self.rule = rule
        self.batch_size = batch_size
        self.graphs = [Path(graph) for graph in graphs]
        self.sessions = [session(graph, threads) for graph in graphs]
        self.preprocessings = list(dict.fromkeys(m.preprocessing for m in self.members))

    def batches(self, images: Sequence[Image]) -> Iterator[list[np.ndarray]]:
        """Every preprocessing's uint8 batch (N, size, size, 3) of `images`, in order; the next
        batch decoded in a thread while the caller runs the graphs on this one."""
        def batch(start: int) -> list[np.ndarray]:
            arrays = [prepared(image, self.preprocessings) for image in images[start:start + self.batch_size]]
            return [np.stack([a[p] for a in arrays]) for p in range(len(self.preprocessings))]

        starts = range(0, len(images), self.batch_size)
        with ThreadPoolExecutor(max_workers=1) as reader:
            pending = reader.submit(batch, starts[0]) if starts else None
            for following in [*starts[1:], None]:
                assert pending is not None
                current = pending.result()
                pending = reader.submit(batch, following) if following is not None else None
                yield current

    def member_outputs(self, member: int, resized: np.ndarray, views: Sequence[str], features: bool
                       ) -> tuple[list[np.ndarray], np.ndarray | None, np.ndarray | None]:
        graph = self.sessions[member]
        probabilities, own, head = [], None, None
        for view in views:
            pooled, logits = graph.run([FEATURES, LOGITS], {INPUT: np.ascontiguousarray(ARRAY_VIEWS[view](resized))})
            probabilities.append(softmax(logits))
            if view == "identity":
                own, head = pooled, logits
        if features and head is None:  # the image as it is was not among the views
            own, head = graph.run([FEATURES, LOGITS], {INPUT: resized})
        if not features:
            return probabilities, None, None
        assert own is not None and head is not None  # run above
        return probabilities, own.astype(np.float64), head.astype(np.float64)
