"""The metrics training updates per batch and pools per epoch (torchmetrics, synchronised across
DDP processes), named like every other metric: `<split>/<metric>`. What training logs once for
test after fit comes from `allcls.metrics.vectorised`, like evaluation's numbers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassCohenKappa,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from allcls.metrics.names import per_class_name


def epoch_metrics(num_classes: int) -> MetricCollection:
    """The training metrics (`names.TRAINING_SCALAR`, then precision and recall per class)."""
    metrics: dict[str, Metric | MetricCollection] = {
        "accuracy": MulticlassAccuracy(num_classes, average="micro"),
        "balanced_accuracy": MulticlassRecall(num_classes, average="macro"),
        "f1_weighted": MulticlassF1Score(num_classes, average="weighted"),
        "f1_macro": MulticlassF1Score(num_classes, average="macro"),
        "auroc": MulticlassAUROC(num_classes, average="macro"),
        "kappa": MulticlassCohenKappa(num_classes),
        "precision": MulticlassPrecision(num_classes, average=None),
        "recall": MulticlassRecall(num_classes, average=None),
    }
    return MetricCollection(metrics)


def flatten(results: dict[str, torch.Tensor], class_names: Sequence[str], prefix: str = "") -> dict[str, float]:
    """{'val/precision': tensor([a, b])} -> {'val/precision_hem': a, 'val/precision_all': b}."""
    flat = {}
    for key, value in results.items():
        value = value.detach().float().cpu()
        if value.ndim == 0:
            flat[f"{prefix}{key}"] = float(value)
        else:
            for name, item in zip(class_names, value.tolist(), strict=True):
                flat[f"{prefix}{per_class_name(key, name)}"] = float(item)
    return flat
