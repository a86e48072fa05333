"""Class probabilities for a whole split, in one single-device pass (every sample exactly once)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader


@torch.inference_mode()
def predict_probabilities(model: nn.Module, loader: DataLoader, device: torch.device | str = "cpu") -> np.ndarray:
    """Softmax probabilities (samples x classes, float64, rows summing to 1) in the loader's order."""
    was_training = model.training
    model.eval().to(device)
    chunks = []
    for images, *_ in loader:
        logits = model(images.to(device, non_blocking=True)).double()
        chunks.append(logits.softmax(dim=1).cpu().numpy())
    model.train(was_training)
    return np.concatenate(chunks) if chunks else np.zeros((0, 0))
