"""The range of each number a user sets on the command line, checked before any work: a value
outside it would end in a library's traceback, or worse, in a FINISHED run that trained nothing.
One table per entry script; a key its config does not have (another optimizer, a callback
switched off) is skipped."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from allcls.errors import AllclsError

Rule = tuple[Callable[[Any], bool], str]


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def at_least(low: int) -> Rule:
    return (lambda v: _whole(v) and v >= low), f"a whole number of at least {low}"


def optional(rule: Rule) -> Rule:
    check, wanted = rule
    return (lambda v: v is None or check(v)), f"null or {wanted}"


POSITIVE: Rule = (lambda v: _number(v) and v > 0, "a number above 0")
NOT_NEGATIVE: Rule = (lambda v: _number(v) and v >= 0, "a number of at least 0")
FRACTION: Rule = (lambda v: _number(v) and 0 <= v < 1, "a number from 0 up to (not including) 1")
DECAY: Rule = (lambda v: _number(v) and 0 < v <= 1, "a number above 0, at most 1 (e.g. 0.75)")

TRAIN: dict[str, Rule] = {
    "data.batch_size": at_least(1),
    "data.eval_batch_size": optional(at_least(1)),
    "data.num_workers": optional(at_least(0)),
    "trainer.max_epochs": at_least(1),
    "trainer.log_every_n_steps": at_least(1),
    "trainer.accumulate_grad_batches": at_least(1),
    "model.optimizer.lr": POSITIVE,
    "model.optimizer.weight_decay": NOT_NEGATIVE,
    "model.label_smoothing": FRACTION,
    "model.layer_decay": optional(DECAY),
    "callbacks.ema.decay": DECAY,
    "model.freeze_backbone_epochs": at_least(0),
    "model.unfreeze_lr_factor": POSITIVE,
    "backbone.drop_rate": FRACTION,
    "backbone.input_size": optional(at_least(16)),
    "callbacks.early_stopping.patience": at_least(0),
}
RATE: Rule = (lambda v: _number(v) and 0 < v < 1, "a number between 0 and 1, e.g. 0.02")
COVERAGE: Rule = (lambda v: _number(v) and 0.5 <= v < 1, "a number from 0.5 up to (not including) 1, e.g. 0.95")
EVALUATE: dict[str, Rule] = {
    "batch_size": optional(at_least(1)),
    "num_workers": optional(at_least(0)),
    "bootstrap": at_least(0),
    "gradcam.samples_per_class": at_least(1),
    "conformal.coverage": COVERAGE,
    "referral.max_miss_rate": RATE,
    "ood.max_rejected": RATE,
    "ood.train_cells": at_least(2),
}
PACKAGE: dict[str, Rule] = {
    "coverage": COVERAGE,
    "referral.max_miss_rate": RATE,
    "ood.max_rejected": RATE,
    "ood.train_cells": at_least(2),
    "bootstrap": at_least(0),
    "quantize_max_drop": (lambda v: _number(v) and 0 <= v < 1, "a share between 0 and 1, e.g. 0.005"),
}
PREDICT: dict[str, Rule] = {
    "coverage": COVERAGE,
}
ENSEMBLE: dict[str, Rule] = {
    "cv_folds": at_least(2),
    "bootstrap": at_least(0),
}


def check_ranges(cfg: DictConfig, rules: dict[str, Rule]) -> None:
    """Refuse, naming the key and what it takes, the first value outside its range."""
    for key, (allowed, wanted) in rules.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT and not allowed(value):
            raise AllclsError(f"{key}={value!r} is out of range: it takes {wanted}.")
    if OmegaConf.select(cfg, "dataset.classes") is not None:
        classes = list(cfg.dataset.classes)
        if len(set(classes)) != len(classes) or len(classes) < 2:
            raise AllclsError(f"dataset.classes={classes} must name at least two different classes.")


_ABSENT = object()
