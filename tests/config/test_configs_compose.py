"""Every value of every config group composes, and the objects it describes can be built."""

import dataclasses
from pathlib import Path

import albumentations as A
import hydra
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from omegaconf import OmegaConf

from allcls.config.sections import instantiate_dict
from allcls.errors import AllclsError
from allcls.models.backbones import BackboneSpec, create_backbone, input_spec

from helpers import CONF_DIR, compose_config


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_every_group_has_options():
    for group in ("dataset", "backbone", "augmentation", "trainer", "logger", "experiment", "hparams_search", "paths",
                  "hydra"):
        assert options(group), group


@pytest.mark.parametrize("dataset", options("dataset"))
def test_dataset_configs_compose_and_build_their_reader(train_cfg, dataset, tmp_path):
    cfg = train_cfg(f"dataset={dataset}", f"dataset.root={tmp_path}")
    reader = hydra.utils.instantiate(cfg.dataset.reader)
    assert reader.name.startswith(cfg.dataset.name.split("-")[0])
    assert set(cfg.dataset.split) == {"hints", "val_fraction", "test_fraction", "seed", "manifest", "by"}


@pytest.mark.parametrize("backbone", options("backbone"))
def test_backbone_configs_build_a_model_that_classifies(train_cfg, backbone):
    cfg = train_cfg(f"backbone={backbone}", fast=False)
    settings = BackboneSpec.of(OmegaConf.to_container(cfg.backbone))
    spec = input_spec(settings)
    # The architecture, without fetching ImageNet weights (mobilenetv2_imagenet asks for them), on the
    # meta device: only shapes are checked, so no weight is initialised and no arithmetic is done.
    with torch.device("meta"):
        model = create_backbone(dataclasses.replace(settings, pretrained=False), num_classes=3).eval()
        assert model(torch.zeros(1, 3, spec.size, spec.size)).shape == (1, 3)


def test_backbone_input_size_follows_the_backbone_unless_overridden(train_cfg):
    assert input_spec(BackboneSpec.of(train_cfg("backbone=xception", fast=False).backbone)).size == 299
    assert input_spec(BackboneSpec.of(train_cfg("backbone=mobilenetv2", fast=False).backbone)).size == 224
    smaller = train_cfg("backbone=xception", "backbone.input_size=128", fast=False)
    xception = input_spec(BackboneSpec.of(smaller.backbone))
    assert xception.size == 128 and xception.mean == (0.5, 0.5, 0.5)


def test_a_normalisation_without_one_value_per_colour_channel_is_refused(train_cfg):
    cfg = train_cfg("backbone=mobilenetv2", "backbone.mean=[0.5,0.5]", fast=False)
    with pytest.raises(AllclsError, match=r"backbone.mean=\[0.5, 0.5\] needs one value per colour channel"):
        input_spec(BackboneSpec.of(cfg.backbone))


@pytest.mark.parametrize("augmentation", options("augmentation"))
def test_augmentation_configs_build_albumentations_pipelines(train_cfg, augmentation):
    cfg = train_cfg(f"augmentation={augmentation}")
    transforms = hydra.utils.instantiate(cfg.augmentation.transforms, _convert_="all")
    pipeline = A.Compose(transforms)
    image = (torch.rand(40, 40, 3) * 255).byte().numpy()
    assert pipeline(image=image)["image"].shape == (40, 40, 3)


@pytest.mark.parametrize("trainer", options("trainer"))
def test_trainer_configs_compose(train_cfg, trainer):
    cfg = train_cfg(f"trainer={trainer}")
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    OmegaConf.to_container(cfg.trainer, resolve=True)  # every interpolation resolves


@pytest.mark.parametrize("trainer", ["cpu", "ddp_cpu"])
def test_cpu_trainers_instantiate_with_the_callbacks(train_cfg, trainer):
    cfg = train_cfg(f"trainer={trainer}")
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=instantiate_dict(cfg.callbacks), logger=False)
    assert trainer.max_epochs == cfg.trainer.max_epochs == 1
    checkpoint, early = trainer.checkpoint_callback, trainer.early_stopping_callback  # the configured ones
    assert isinstance(checkpoint, ModelCheckpoint) and isinstance(early, EarlyStopping)
    assert (checkpoint.monitor, checkpoint.mode) == (cfg.callbacks.model_checkpoint.monitor,
                                                    cfg.callbacks.model_checkpoint.mode)
    assert (early.monitor, early.patience) == (cfg.callbacks.early_stopping.monitor,
                                              cfg.callbacks.early_stopping.patience)
    assert sorted(c.filename for c in trainer.checkpoint_callbacks) == ["best", "last"]  # last: what resume reads
    assert any(isinstance(c, LearningRateMonitor) for c in trainer.callbacks)


def test_ddp_accepts_unused_parameters_only_for_two_phase_training(train_cfg):
    assert train_cfg("trainer=ddp_cpu").trainer.strategy.find_unused_parameters is False
    two_phase = train_cfg("trainer=ddp_cpu", "model.freeze_backbone_epochs=2")
    assert two_phase.trainer.strategy.find_unused_parameters is True


@pytest.mark.parametrize("logger", options("logger"))
def test_logger_configs_name_a_tracking_uri(train_cfg, logger, tmp_path):
    cfg = train_cfg(f"logger={logger}")
    assert cfg.logger.tracking_uri.startswith(("sqlite:///", "http://"))


def test_local_store_lives_in_the_launch_folder(train_cfg, tmp_path):
    cfg = train_cfg()
    assert cfg.logger.tracking_uri == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert Path(cfg.logger.artifact_location) == tmp_path / "mlruns" / "artifacts"


def test_tracking_uri_comes_from_the_environment_when_set(train_cfg, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert train_cfg().logger.tracking_uri == "http://127.0.0.1:5999"


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiment_configs_compose(train_cfg, experiment):
    cfg = train_cfg(f"experiment={experiment}", fast=False)
    if OmegaConf.is_missing(cfg.dataset, "root"):  # a real dataset's root is the user's to give
        cfg = train_cfg(f"experiment={experiment}", "dataset.root=/data/cells", fast=False)
    # Every interpolation resolved, the resolvers included: a broken one fails here, not in a user's
    # run (Hydra's own node needs a running job: its job number, its output folder)
    for key in cfg:
        if key != "hydra" and OmegaConf.is_config(cfg[key]):
            OmegaConf.to_container(cfg[key], resolve=True, throw_on_missing=True)


def test_hparams_search_optuna_composes_with_the_sweeper(train_cfg):
    cfg = train_cfg("hparams_search=optuna")
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert "model.optimizer.lr" in cfg.hydra.sweeper.params
    assert cfg.hydra.sweeper.direction == "maximize"


def test_monitor_mode_and_the_optuna_direction_follow_the_monitored_metric(train_cfg):
    cfg = train_cfg("hparams_search=optuna", "monitor=val/loss")
    assert cfg.monitor_mode == "min" and cfg.hydra.sweeper.direction == "minimize"
    assert cfg.callbacks.model_checkpoint.mode == "min" and cfg.callbacks.early_stopping.mode == "min"
    assert train_cfg("monitor=val/kappa").monitor_mode == "max"


def test_paths_and_job_folders_are_one_config_group_for_every_entry_script(tmp_path):
    for name in ("train", "evaluate", "ensemble"):
        cfg = compose_config(name, tmp_path)
        assert cfg.paths.root == str(tmp_path) and cfg.paths.data_dir == f"{tmp_path}/data"
        assert cfg.hydra.run.dir.startswith(f"outputs/{name}/") and cfg.hydra.sweep.dir.startswith(f"multirun/{name}/")


def test_ensemble_config_names_no_experiment_of_its_own(tmp_path):
    assert compose_config("ensemble", tmp_path).experiment_name is None


def test_optimizer_and_scheduler_are_partial_factories(train_cfg):
    cfg = train_cfg()
    factory = hydra.utils.instantiate(cfg.model.optimizer)
    optimizer = factory(params=[torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["lr"] == cfg.model.optimizer.lr
    scheduler = hydra.utils.instantiate(cfg.model.scheduler)(optimizer=optimizer)
    assert scheduler.T_max == cfg.trainer.max_epochs
