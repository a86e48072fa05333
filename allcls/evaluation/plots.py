"""Evaluation plots, readable at a glance: confusion matrices, ROC and precision-recall curves per
class, a reliability diagram, and accuracy per subject. Each function writes one PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.patches import Rectangle
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from allcls.figures import save_figure, subplots
from allcls.metrics.vectorised import ECE_BINS, confusion, expected_calibration_error


def confusion_matrices(probabilities: np.ndarray, labels: np.ndarray, class_names: Sequence[str], title: str,
                       path: Path) -> Path:
    """Counts and row-normalised (recall) side by side."""
    counts = confusion(probabilities.argmax(axis=1)[None], labels, len(class_names))[0]
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    size = 2.2 + 0.7 * len(class_names)
    fig, axes = subplots(1, 2, figsize=(2 * size + 1, size))
    panels = ((axes[0], counts, "counts", "{:.0f}"), (axes[1], normalised, "normalised by true class", "{:.2f}"))
    for ax, matrix, name, fmt in panels:
        ax.imshow(matrix, cmap="Blues", vmin=0, vmax=matrix.max() or 1)
        for (row, column), value in np.ndenumerate(matrix):
            ax.text(column, row, fmt.format(value), ha="center", va="center",
                    color="white" if value > 0.6 * (matrix.max() or 1) else "black")
        ax.set_xticks(range(len(class_names)), class_names, rotation=30, ha="right")
        ax.set_yticks(range(len(class_names)), class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name)
    fig.suptitle(title)
    return save_figure(fig, path)


def _one_vs_rest(labels: np.ndarray, class_names: Sequence[str], need_negatives: bool):
    """(index, name, positives) of each class with a curve to draw: it has samples (and, for ROC, others)."""
    for c, name in enumerate(class_names):
        positive = labels == c
        if positive.any() and not (need_negatives and positive.all()):
            yield c, name, positive


def roc_curves(probabilities: np.ndarray, labels: np.ndarray, class_names: Sequence[str], title: str,
               path: Path) -> Path:
    fig, ax = subplots(figsize=(5.5, 5))
    for c, name, positive in _one_vs_rest(labels, class_names, need_negatives=True):
        fpr, tpr, _ = roc_curve(positive, probabilities[:, c])
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(positive, probabilities[:, c]):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)",
           title=f"ROC, one class vs the rest\n{title}", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def precision_recall_curves(probabilities: np.ndarray, labels: np.ndarray, class_names: Sequence[str], title: str,
                            path: Path) -> Path:
    fig, ax = subplots(figsize=(5.5, 5))
    for c, name, positive in _one_vs_rest(labels, class_names, need_negatives=False):
        precision, recall, _ = precision_recall_curve(positive, probabilities[:, c])
        average_precision = average_precision_score(positive, probabilities[:, c])
        ax.step(recall, precision, where="post",
                label=f"{name} (AP {average_precision:.3f}, prevalence {positive.mean():.2f})")
    ax.set(xlabel="recall", ylabel="precision", title=f"Precision-recall, one class vs the rest\n{title}",
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower left", fontsize=8)
    return save_figure(fig, path)


def reliability_diagram(curves: dict[str, np.ndarray], labels: np.ndarray, title: str, path: Path) -> Path:
    """Accuracy against confidence per bin for each set of probabilities (e.g. before and after
    temperature scaling); the gap to the diagonal is miscalibration."""
    fig, ax = subplots(figsize=(5.5, 5))
    edges = np.linspace(0, 1, ECE_BINS + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    for name, probabilities in curves.items():
        confidence = probabilities.max(axis=1)
        correct = probabilities.argmax(axis=1) == labels
        bins = np.minimum((confidence * ECE_BINS).astype(int), ECE_BINS - 1)
        counts = np.bincount(bins, minlength=ECE_BINS)
        accuracy = np.divide(np.bincount(bins, correct, ECE_BINS), counts, out=np.full(ECE_BINS, np.nan),
                             where=counts > 0)
        ece = expected_calibration_error(probabilities[None], labels)[0]
        ax.plot(centres[counts > 0], accuracy[counts > 0], marker="o", label=f"{name} (ECE {ece:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
    ax.set(xlabel="confidence (top-class probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.01),
           title=f"Reliability diagram\n{title}")
    ax.legend(loc="upper left", fontsize=8)
    return save_figure(fig, path)


def per_subject_chart(per_subject: pd.DataFrame, title: str, path: Path) -> Path:
    fig, ax = subplots(figsize=(max(6, 0.35 * len(per_subject) + 2), 4.5))
    classes = sorted(set(per_subject["true_class"]))
    colours = {c: colormaps["tab10"](i % 10) for i, c in enumerate(classes)}
    x = np.arange(len(per_subject))
    ax.bar(x, per_subject["accuracy"], color=[colours[c] for c in per_subject["true_class"]])
    for xi, (accuracy, cells) in enumerate(zip(per_subject["accuracy"], per_subject["cells"], strict=True)):
        ax.text(xi, accuracy + 0.01, str(cells), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, per_subject["subject"], rotation=90, fontsize=7)
    ax.set(ylabel="accuracy", ylim=(0, 1.1), title=f"Accuracy per subject (number of cells on top)\n{title}")
    ax.legend(handles=[Rectangle((0, 0), 1, 1, color=colours[c]) for c in classes], labels=classes,
              title="true class", fontsize=8, loc="lower right")
    return save_figure(fig, path)
