"""What a training run records of its config: its name, its tags and its params
(allcls.tracking.schema says what they are; this reads them off the composed config)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from allcls.config.hydra_job import JobInfo
from allcls.data.preparation import PreparedDataset
from allcls.tracking import schema as run_schema


def run_name(cfg: DictConfig, job: JobInfo) -> str:
    """`<backbone>-<augmentation>-s<seed>`, with the config choices' names where Hydra knows them."""
    backbone = job.choices.get("backbone", cfg.backbone.name)
    return run_schema.train_run_name(backbone, job.choices.get("augmentation", ""), cfg.seed)


def tags(cfg: DictConfig, dataset: PreparedDataset) -> dict[str, str]:
    return run_schema.train_tags(dataset, cfg.backbone.name, Path(cfg.paths.output_dir),
                                 cfg.dataset.split.get("by", "subject"))


def _short_target(node: Any) -> str:
    return str(node["_target_"]).rsplit(".", 1)[-1] if node else "none"


def _strategy_name(strategy: Any) -> str:
    """'ddp' for a strategy given by name, 'DDPStrategy' for one given as a config."""
    if not strategy:
        return "auto"
    return strategy if isinstance(strategy, str) else _short_target(strategy)


def params(cfg: DictConfig, dataset: PreparedDataset, input_size: int, job: JobInfo, input_pipeline: str
           ) -> run_schema.TrainParams:
    """`input_pipeline`: the one that served the training images (batch or per_sample)."""
    counts = dataset.manifest["split"].value_counts()
    optimizer, trainer = cfg.model.optimizer, cfg.trainer
    return run_schema.TrainParams(
        dataset=dataset.name,
        backbone=cfg.backbone.name,
        pretrained=cfg.backbone.pretrained,
        input_size=input_size,
        augmentation=job.choices.get("augmentation", "custom"),
        imbalance=cfg.data.imbalance,
        batch_size=cfg.data.batch_size,
        input_pipeline=input_pipeline,
        packed_cache=bool(cfg.data.get("cache_dir")),
        optimizer=_short_target(optimizer),
        lr=optimizer.get("lr"),
        weight_decay=optimizer.get("weight_decay"),
        scheduler=_short_target(cfg.model.get("scheduler")),
        freeze_backbone_epochs=cfg.model.freeze_backbone_epochs,
        max_epochs=trainer.get("max_epochs"),
        precision=trainer.get("precision"),
        accelerator=trainer.get("accelerator"),
        devices=trainer.get("devices"),
        strategy=_strategy_name(trainer.get("strategy")),
        seed=cfg.seed,
        split_seed=cfg.dataset.split.seed,
        split_by=cfg.dataset.split.get("by", "subject"),
        n_train=int(counts.get("train", 0)),
        n_val=int(counts.get("val", 0)),
        n_test=int(counts.get("test", 0)),
    )
