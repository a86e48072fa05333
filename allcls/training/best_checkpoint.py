"""The best checkpoint, tested: reloaded, each evaluated split predicted in one single-device pass
over the whole split (every sample exactly once), its prediction table and confusion matrix logged,
and the test metrics, computed as evaluation computes them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader

from allcls.data.datamodule import CellDataModule
from allcls.inference.views import check_views, view_probabilities
from allcls.metrics.names import HEADLINE
from allcls.metrics.vectorised import confusion_frame, table_scores
from allcls.models.lit_classifier import LitClassifier
from allcls.predictions import make_table, write_table
from allcls.tracking.run import Run

log = logging.getLogger(__name__)

EVALUATED_SPLITS = ("val", "test")


def evaluate_best_checkpoint(run: Run, trainer: L.Trainer, model: LitClassifier,
                             datamodule: CellDataModule, output_dir: Path) -> float:
    """Reload the best checkpoint; write the val and test prediction tables from one single-device
    pass over each whole split; log test metrics (the same vectorised metrics as evaluation's) and
    confusion matrices; return the best score."""
    checkpoint = trainer.checkpoint_callback  # typed as the base Checkpoint: ours is a ModelCheckpoint, or None
    if not isinstance(checkpoint, ModelCheckpoint):
        checkpoint = None
    best_path = checkpoint.best_model_path if checkpoint else ""
    if best_path:
        state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict(state)
        run.log_file(best_path, "checkpoints")
    elif not trainer.fast_dev_run:  # type: ignore[attr-defined]  # Lightning's, undeclared; a fast dev run saves none
        log.warning("No best checkpoint was saved (did validation run?): evaluating the final weights.")
    device = trainer.strategy.root_device
    dataset, classes = datamodule.prepared, datamodule.classes
    for split in EVALUATED_SPLITS:
        samples = dataset.split_samples(split)
        probabilities = predict_probabilities(model, datamodule.eval_dataloader(split), device,
                                              model_input=datamodule.model_input)
        labels = np.asarray(dataset.labels(samples), dtype=np.int64)
        table = make_table([s.sample_id for s in samples], [s.subject for s in samples], labels, probabilities, classes)
        run.log_file(write_table(table, output_dir / "predictions" / f"{split}.parquet"), "predictions")
        run.log_table(confusion_frame(probabilities, labels, classes), f"confusion_matrix/{split}.csv")
        if split == "test":
            scores = table_scores(probabilities, labels, classes, "test/")
            run.log_metrics(scores, step=trainer.global_step)
            headline = ", ".join(f"{k}={scores[f'test/{k}']:.3f}" for k in HEADLINE)
            log.info("The best checkpoint (chosen on validation), on test: %s", headline)
    score = checkpoint.best_model_score if checkpoint else None
    return float(score) if score is not None else float("nan")


@torch.inference_mode()
def predict_probabilities(model: nn.Module, loader: DataLoader, device: torch.device | str = "cpu",
                          views: Sequence[str] = ("identity",),
                          model_input: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """Softmax probabilities (samples x classes, float64, rows summing to 1) in the loader's order,
    averaged over the test-time augmentation `views` (default: the image as it is). `model_input`
    turns a batch, on the device, into the network's input (the datamodule's uint8 batches)."""
    views = check_views(views)
    was_training = model.training
    model.eval().to(device)
    chunks = []
    for images, *_ in loader:
        images = images.to(device, non_blocking=True)
        if model_input is not None:
            images = model_input(images)
        chunks.append(view_probabilities(model, images, views).cpu().numpy())
    model.train(was_training)
    return np.concatenate(chunks) if chunks else np.zeros((0, 0))
