"""Building a training job from its config, refusing before any work what would fail later: the
dataset prepared and split, the datamodule sized for the backbone, the LitClassifier."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from allcls.config.ranges import TRAIN, check_ranges
from allcls.config.sections import build, dataset_spec, plain
from allcls.data.datamodule import CellDataModule, choose_pipeline
from allcls.data.packed_cache import check_cache_dir
from allcls.data.preparation import PreparedDataset
from allcls.errors import AllclsError
from allcls.jobs.ddp import is_rank_zero
from allcls.jobs.resume import RUN_FILE
from allcls.metrics.names import metric_names, mode
from allcls.models.backbones import BackboneSpec, input_spec
from allcls.models.lit_classifier import LitClassifier

log = logging.getLogger(__name__)


def refuse_a_used_output_dir(output_dir: Path) -> None:
    """A job's folder is its record: a second job there would overwrite its checkpoints and
    prediction tables (the default folder names the microsecond it started; a fixed hydra.run.dir does not)."""
    used = sorted(str(p.relative_to(output_dir)) for pattern in ("checkpoints/*", "predictions/*", str(RUN_FILE))
                  for p in output_dir.glob(pattern) if p.is_file())
    if used:
        raise AllclsError(f"{output_dir} already holds another job's files ({', '.join(used[:3])}"
                          f"{', ...' if len(used) > 3 else ''}): this job would overwrite them. Give it a new "
                          "folder (leave hydra.run.dir at its default, or choose another), or move that one away.")


def check_config(cfg: DictConfig) -> BackboneSpec:
    """Refuse what would fail later, before anything is read; returns the backbone's settings."""
    check_ranges(cfg, TRAIN)
    if OmegaConf.is_missing(cfg.dataset, "root"):
        raise AllclsError(f"dataset.root is not set: pass dataset.root=/path/to/{cfg.dataset.name} "
                          "(the folder in the dataset's original layout).")
    if cfg.dataset.get("root") and Path(str(cfg.dataset.root)).expanduser().is_file():
        raise AllclsError(f"Dataset root {cfg.dataset.root} is a file, not a folder: check dataset.root.")
    backbone = BackboneSpec.of(plain(cfg.backbone))
    input_spec(backbone)  # an unknown backbone name or a bad input size
    choose_pipeline(cfg.data.pipeline, build_augmentations(cfg))  # a value albumentations refuses, or no batch form
    if cfg.data.cache_dir:
        check_cache_dir(cfg.data.cache_dir)
    if backbone.weights and not backbone.pretrained:
        log.warning("backbone.weights is set but backbone.pretrained=false: the weights file is not used.")
    return backbone


def check_monitor(cfg: DictConfig, class_names: list[str]) -> None:
    known = ["val/loss", *metric_names(class_names, "val/")]
    if cfg.monitor not in known:
        raise AllclsError(f"monitor={cfg.monitor!r} is not a validation metric: use one of {known}.")
    if cfg.monitor_mode != mode(cfg.monitor):
        raise AllclsError(f"monitor_mode={cfg.monitor_mode!r} is the wrong way round for {cfg.monitor} "
                          f"({mode(cfg.monitor)} is better): leave monitor_mode out, it follows monitor.")


def prepare(cfg: DictConfig) -> PreparedDataset:
    """The dataset read, checked and split as `dataset` says."""
    return dataset_spec(cfg.dataset).prepare()


def build_augmentations(cfg: DictConfig) -> list:
    """The augmentation's transforms; one that refuses its settings is one line naming it and why."""
    for index, node in enumerate(cfg.augmentation.transforms or []):
        try:
            build(node, _convert_="all")
        except InstantiationException as error:
            cause = error.__cause__ or error
            why = " ".join(line.split(" [type=")[0].strip() for line in str(cause).splitlines()
                           if line.strip() and not line.strip().startswith("For further information")).rstrip(".")
            raise AllclsError(f"augmentation.transforms[{index}] ({node.get('_target_')}) refuses its settings: {why}. "
                              "Fix the value in the override or in conf/augmentation/.") from None
    return build(cfg.augmentation.transforms, _convert_="all")


def build_datamodule(cfg: DictConfig, dataset: PreparedDataset, backbone: BackboneSpec) -> CellDataModule:
    # Partial, then called: objects passed through instantiate itself would be turned into configs.
    datamodule = build(cfg.data, _partial_=True)(
        dataset=dataset,
        input_spec=input_spec(backbone),
        roi_crop=cfg.dataset.roi_crop,
        augmentations=build_augmentations(cfg),
        seed=cfg.seed,
    )
    if is_rank_zero():
        log.info("Input pipeline: %s", datamodule.describe())
    return datamodule


def build_model(cfg: DictConfig, datamodule: CellDataModule, backbone: BackboneSpec) -> LitClassifier:
    return build(
        cfg.model,
        backbone=backbone.as_dict(),
        class_names=datamodule.classes,
        class_weights=datamodule.loss_weights(),
        feature_smote=cfg.data.imbalance == "feature_smote",
        seed=cfg.seed,
        _convert_="all",
    )
