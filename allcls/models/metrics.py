"""Classification metrics (torchmetrics), named as they appear in MLflow: `<split>/<metric>`."""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (MulticlassAccuracy, MulticlassAUROC, MulticlassCohenKappa,
                                         MulticlassConfusionMatrix, MulticlassF1Score, MulticlassPrecision,
                                         MulticlassRecall)


def classification_metrics(num_classes: int, sync: bool = True) -> MetricCollection:
    """Scalar metrics, plus per-class precision and recall (vectors, flattened by `flatten`).
    `sync=False` for metrics of one process's own data (a whole prediction table): they must not
    wait for the other DDP processes."""
    options = {"sync_on_compute": sync}
    return MetricCollection({
        "accuracy": MulticlassAccuracy(num_classes, average="micro", **options),
        "balanced_accuracy": MulticlassRecall(num_classes, average="macro", **options),
        "f1_weighted": MulticlassF1Score(num_classes, average="weighted", **options),
        "f1_macro": MulticlassF1Score(num_classes, average="macro", **options),
        "auroc": MulticlassAUROC(num_classes, average="macro", **options),
        "kappa": MulticlassCohenKappa(num_classes, **options),
        "precision": MulticlassPrecision(num_classes, average=None, **options),
        "recall": MulticlassRecall(num_classes, average=None, **options),
    })


PER_CLASS_METRICS = ("precision", "recall")


def metric_names(class_names: Sequence[str], prefix: str = "") -> list[str]:
    """Every name `flatten` produces for these classes."""
    names = []
    for key in classification_metrics(len(class_names)).keys():
        if key in PER_CLASS_METRICS:
            names += [f"{prefix}{key}_{metric_safe(c)}" for c in class_names]
        else:
            names.append(f"{prefix}{key}")
    return names


def metric_safe(name: str) -> str:
    """A class name as it may appear inside a metric name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def flatten(results: dict[str, torch.Tensor], class_names: Sequence[str], prefix: str = "") -> dict[str, float]:
    """{'val/precision': tensor([a, b])} -> {'val/precision_hem': a, 'val/precision_all': b}."""
    flat = {}
    for key, value in results.items():
        value = value.detach().float().cpu()
        if value.ndim == 0:
            flat[f"{prefix}{key}"] = float(value)
        else:
            for name, item in zip(class_names, value.tolist()):
                flat[f"{prefix}{key}_{metric_safe(name)}"] = float(item)
    return flat


def score_probabilities(probabilities: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                        prefix: str = "") -> dict[str, float]:
    """The same metrics as training logs, computed once over a whole prediction table."""
    metrics = classification_metrics(len(class_names), sync=False)
    metrics.update(torch.as_tensor(probabilities, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.long))
    return flatten(metrics.compute(), class_names, prefix)


def confusion_table(probabilities: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """Counts, true class in rows and predicted class in columns."""
    matrix = MulticlassConfusionMatrix(len(class_names), sync_on_compute=False)(
        torch.as_tensor(probabilities, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.long))
    index = pd.Index([f"true_{c}" for c in class_names], name="")
    return pd.DataFrame(matrix.numpy(), index=index, columns=[f"pred_{c}" for c in class_names])
