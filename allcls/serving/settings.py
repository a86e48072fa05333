"""The serving commands' settings (conf/package.yaml, conf/predict.yaml), as frozen dataclasses
built at their entry points."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from omegaconf import DictConfig

from allcls.config.ranges import PACKAGE, PREDICT, check_ranges
from allcls.config.stage import Job, Store, settings_of
from allcls.errors import AllclsError
from allcls.evaluation.settings import OodSettings, ReferralSettings, RuleSettings
from allcls.inference.conformal import SetKind
from allcls.tracking import registry


@dataclass(frozen=True)
class PackageSettings:
    job: Job
    store: Store
    run_id: str  # a training or an ensemble run; `latest`: the newest ensemble run of experiment_name
    experiment_name: str | None = None
    register_as: str | None = None  # a registered model name; None: only log the model into the run
    alias: str | None = None
    coverage: float = 0.95
    sets: SetKind = "class_conditional"
    referral: ReferralSettings = field(default_factory=ReferralSettings)
    ood: OodSettings = field(default_factory=OodSettings)
    dataset_root: str | None = None  # where the run's dataset is on this machine, if not where it was trained
    export: Literal["onnx", "none"] = "onnx"  # each member's network also as an ONNX graph
    runtime: Literal["onnx", "torch"] = "onnx"  # what the model answers with unless asked otherwise
    quantize: Literal["none", "int8"] = "none"  # int8: the graphs quantised, calibrated on validation
    quantize_max_drop: float = 0.005  # refused if test balanced accuracy drops by more than this
    overwrite: bool = False  # replace a model the run already holds (a registered version keeps its own copy)
    force_alias: bool = False  # move `alias` to a model that answers with other columns than the one it names
    bootstrap: int = 1000
    seed: int = 0

    @classmethod
    def of(cls, cfg: DictConfig) -> PackageSettings:
        check_ranges(cfg, PACKAGE)
        settings = settings_of(cls, cfg)
        if settings.alias is not None:
            if not settings.register_as:
                raise AllclsError(f"alias={settings.alias} names a registered model's alias: give register_as=<name> "
                                  "too.")
            registry.check_alias(settings.alias)
        if settings.export == "none" and (settings.runtime == "onnx" or settings.quantize != "none"):
            raise AllclsError("export=none leaves no ONNX graphs to answer with or quantise: pass runtime=torch "
                              "(and quantize=none), or export=onnx.")
        if settings.quantize == "int8" and settings.runtime == "torch":
            raise AllclsError("quantize=int8 makes the ONNX graphs int8, which only ONNX Runtime runs: drop "
                              "runtime=torch.")
        return settings

    @property
    def rule(self) -> RuleSettings:
        return RuleSettings(self.coverage, self.sets, self.referral, self.ood, self.seed)


@dataclass(frozen=True)
class PredictSettings:
    job: Job
    store: Store
    model: str  # models:/<name>@<alias>, models:/<name>/<version>, runs:/<run id>/model, or a run id
    input: str  # a folder (searched recursively), an image file, or a glob
    output: str = "predictions.csv"
    overwrite: bool = False
    tta: bool = False
    coverage: float = 0.95  # the referral rule when a run is packaged on the fly
    dataset_root: str | None = None  # where that run's dataset is now, if it moved (its rule is fitted on it)
    group_by: Literal["subject", "folder"] | None = None  # one decision per patient, beside the cells
    runtime: Literal["onnx", "torch"] | None = None  # None: the one the model was packaged to answer with

    @classmethod
    def of(cls, cfg: DictConfig) -> PredictSettings:
        check_ranges(cfg, PREDICT)
        return settings_of(cls, cfg)
