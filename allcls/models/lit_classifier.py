"""LitClassifier: a backbone, a cross-entropy loss and torchmetrics, with optional two-phase
transfer learning (frozen backbone for the first epochs, then all layers at a lower learning rate)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MaxMetric, MinMetric

from allcls.data.imbalance import feature_smote
from allcls.errors import AllclsError
from allcls.metrics.epoch import epoch_metrics, flatten
from allcls.models.backbones import BackboneSpec, create_backbone
from allcls.models.checkpoints import load_weights, read_checkpoint
from allcls.models.training_options import (
    COMPILE_MODES,
    CompiledNetwork,
    layer_decay_groups,
    make_mixup,
    scale_learning_rates,
)


class LitClassifier(L.LightningModule):
    """Classifies cell images into `class_names` (index order = class index).

    `optimizer` and `scheduler` are factories (Hydra `_partial_: true` configs): the optimizer
    takes the parameters, the scheduler the optimizer. Every metric is logged as
    `<split>/<metric>`; `<monitor>_best` tracks the best monitored value so far.
    """

    def __init__(
        self,
        backbone: BackboneSpec | dict[str, Any],
        class_names: Sequence[str],
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        freeze_backbone_epochs: int = 0,
        unfreeze_lr_factor: float = 0.1,
        monitor: str = "val/f1_weighted",
        monitor_mode: str = "max",
        feature_smote: bool = False,
        seed: int = 0,
        layer_decay: float | None = None,
        mixup: Mapping[str, float] | None = None,
        channels_last: bool = False,
        compile: bool = False,
        compile_mode: str = "default",
    ):
        super().__init__()
        spec = BackboneSpec.of(backbone)
        # Factories are not data: they stay out of the checkpoint, which loads with weights_only=True
        # (so the backbone is stored as plain values too).
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.hparams["backbone"] = spec.as_dict()
        self.backbone_spec = spec
        self.class_names = list(class_names)
        self.model = create_backbone(spec, num_classes=len(self.class_names))
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
        num_classes = len(self.class_names)
        self.train_metrics = epoch_metrics(num_classes)
        self.val_metrics = epoch_metrics(num_classes)
        self.test_metrics = epoch_metrics(num_classes)
        self.monitor, self.monitor_mode = monitor, monitor_mode
        self.best_monitor = MaxMetric() if monitor_mode == "max" else MinMetric()
        self.freeze_backbone_epochs = freeze_backbone_epochs
        self.unfreeze_lr_factor = unfreeze_lr_factor
        self.feature_smote = feature_smote
        self.smote_generator = torch.Generator().manual_seed(seed)
        self.layer_decay, self.channels_last = layer_decay, channels_last
        if compile_mode not in COMPILE_MODES:
            raise AllclsError(f"model.compile_mode={compile_mode!r} is not a torch.compile mode: use one of "
                              f"{list(COMPILE_MODES)}.")
        self.compile_network, self.compile_mode = compile, compile_mode
        self.compiled: CompiledNetwork | None = None  # made when a Trainer configures the model
        if mixup and feature_smote:
            raise AllclsError("model.mixup and data.imbalance=feature_smote both make synthetic samples: use one.")
        self.mixup = make_mixup(mixup, num_classes) if mixup else None

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> LitClassifier:
        """Rebuild from a checkpoint file, loaded with weights_only=True and without fetching any
        pretrained weights (the checkpoint already holds every weight)."""
        checkpoint = read_checkpoint(path, map_location)
        hparams = dict(checkpoint["hyper_parameters"])
        hparams["backbone"] = {**hparams["backbone"], "pretrained": False}
        model = cls(**hparams)
        load_weights(model, checkpoint["state_dict"], path,
                     f"a {model.backbone_spec.name} with classes {list(hparams['class_names'])}")
        return model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() == 4:  # the layout the weights have (a no-op when the batch has it already)
            images = images.contiguous(memory_format=torch.channels_last if self.channels_last else
                                       torch.contiguous_format)
        if self.compiled is not None and (logits := self.compiled(images)) is not None:
            return logits
        return self.model(images)

    # --- steps ------------------------------------------------------------------------------

    def _step(self, batch, split: str) -> torch.Tensor:
        images, labels = batch
        if split == "train" and self.feature_smote:
            logits, loss = self._balanced_in_feature_space(images, labels)
        elif split == "train" and self.mixup is not None and len(labels) % 2 == 0:  # timm mixes pairs
            mixed, targets = self.mixup(images, labels)
            logits = self(mixed)
            loss = self.criterion(logits, targets)  # soft targets (the metrics see the images' own labels)
        else:
            logits = self(images)
            loss = self.criterion(logits, labels)
        getattr(self, f"{split}_metrics").update(logits.softmax(dim=1), labels)
        self.log(f"{split}/loss", loss, on_step=split == "train", on_epoch=True, prog_bar=split != "test",
                 batch_size=len(labels), sync_dist=split != "train")
        return loss

    def _balanced_in_feature_space(self, images: torch.Tensor, labels: torch.Tensor):
        """data.imbalance=feature_smote: the head also trains on synthetic minority features, up to
        the batch's largest class; the logits returned (for the metrics) are the real samples'."""
        # timm types its models as bare nn.Module: torch reads these methods as a Tensor or Module
        features = self.model.forward_head(self.model.forward_features(images),  # type: ignore[operator]
                                           pre_logits=True)
        made, made_labels = feature_smote(features, labels, len(self.class_names), generator=self.smote_generator)
        head = self.model.get_classifier()  # type: ignore[operator]
        logits = head(features)
        loss = self.criterion(torch.cat([logits, head(made)]), torch.cat([labels, made_labels]))
        return logits, loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(images).softmax(dim=1)

    # --- epoch ends: metrics pooled over the epoch (and over processes, by torchmetrics) -------

    def _log_epoch_metrics(self, split: str) -> dict[str, float]:
        metrics = getattr(self, f"{split}_metrics")
        values = flatten(metrics.compute(), self.class_names, f"{split}/")
        metrics.reset()
        self.log_dict(values, sync_dist=True)
        return values

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # a few batches of an untrained model: not a result
            self.val_metrics.reset()
            return
        values = self._log_epoch_metrics("val")
        if self.monitor in values:
            self.best_monitor.update(torch.tensor(values[self.monitor]))
            self.log(f"{self.monitor}_best", self.best_monitor.compute(), sync_dist=True)

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    # --- optimisation and two-phase transfer learning -----------------------------------------

    def configure_model(self) -> None:
        if self.channels_last:  # NHWC: faster convolutions on GPUs with tensor cores (inputs follow)
            self.model.to(memory_format=torch.channels_last)
        if self.compile_network and self.compiled is None:
            self.compiled = CompiledNetwork(self.model, self.compile_mode)

    def configure_optimizers(self):
        factory = self.optimizer_factory or (lambda params: torch.optim.AdamW(params, lr=1e-3))
        if self.layer_decay is None:
            optimizer = factory(params=self.parameters())
        else:  # the factory's weight decay goes to the groups that take one (a Hydra partial keeps it)
            weight_decay = getattr(factory, "keywords", {}).get("weight_decay", 0.0)
            optimizer = factory(params=layer_decay_groups(self.model, weight_decay, self.layer_decay))
            scale_learning_rates(optimizer)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer), "monitor": self.monitor,
                                 "name": "train/lr"}}  # what LearningRateMonitor logs (else lr-AdamW)

    def backbone_parameters(self) -> list[nn.Parameter]:
        # timm types its models as bare nn.Module: torch reads the method as a Tensor or Module
        head = {id(p) for p in self.model.get_classifier().parameters()}  # type: ignore[operator]
        return [p for p in self.model.parameters() if id(p) not in head]

    def on_fit_start(self) -> None:
        if self.freeze_backbone_epochs > 0 and self.current_epoch < self.freeze_backbone_epochs:
            for parameter in self.backbone_parameters():
                parameter.requires_grad_(False)

    def on_train_epoch_start(self) -> None:
        frozen = self.current_epoch < self.freeze_backbone_epochs
        if frozen:
            # A frozen backbone keeps its ImageNet batch-norm statistics too.
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                        p.requires_grad for p in module.parameters(recurse=False)):
                    module.eval()
        elif self.freeze_backbone_epochs > 0 and self.current_epoch == self.freeze_backbone_epochs:
            self._unfreeze_backbone()

    def _unfreeze_backbone(self) -> None:
        """Phase two: train every layer, at `unfreeze_lr_factor` times the learning rate."""
        for parameter in self.backbone_parameters():
            parameter.requires_grad_(True)
        self.model.train()
        for optimizer in self.trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] *= self.unfreeze_lr_factor
                if "initial_lr" in group:
                    group["initial_lr"] *= self.unfreeze_lr_factor
        for config in self.trainer.lr_scheduler_configs:
            if hasattr(config.scheduler, "base_lrs"):
                config.scheduler.base_lrs = [lr * self.unfreeze_lr_factor for lr in config.scheduler.base_lrs]
