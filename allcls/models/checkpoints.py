"""Reading checkpoint files safely: tensors and plain values only (`weights_only=True`), and one
line naming the file when one cannot be used. A file that holds other Python objects is refused
without a hint to load it unsafely: for a malicious file, that is how its payload would run."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from allcls.errors import AllclsError


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint that allcls training wrote: its `state_dict`, and `hyper_parameters` naming at
    least the backbone and the class names."""
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        if not zipfile.is_zipfile(path):  # not something torch.save wrote: torch's advice would mislead
            raise AllclsError(f"{path} is not a readable checkpoint (not a file that torch.save wrote).") from None
        raise AllclsError(f"{path} holds Python objects that are not weights, so allcls will not load it "
                          "(loading such a file can run code it carries). Use a checkpoint that allcls training "
                          "wrote.") from None
    except Exception as error:  # torch raises many types for a cut or foreign file (KeyError for a text file)
        raise AllclsError(f"{path} is not a readable checkpoint ({first_line(error).split('. ')[0]}): it is cut "
                          "short, damaged, or not a checkpoint.") from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or not {"backbone", "class_names"} <= hparams.keys() or \
            "state_dict" not in checkpoint:
        raise AllclsError(f"{path} is not an allcls checkpoint (no state_dict, or hyper_parameters without backbone "
                          "and class_names): give a checkpoints/best.ckpt that allcls training wrote.")
    return checkpoint


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], path: str | Path, what: str) -> None:
    """`model.load_state_dict`, with one line naming the file when its weights do not fit `what`."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise AllclsError(f"{path}: its weights do not fit {what} ({first_line(error, 'size mismatch')}). "
                          "Was it written by another version of allcls, or edited?") from None


def first_line(error: BaseException, prefer: str = "") -> str:
    """The most telling line of a library's multi-line message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    preferred = [line for line in lines if prefer and prefer in line]
    return (preferred or lines or [type(error).__name__])[0][:300]
