"""The evaluate task's settings (conf/evaluate.yaml), as frozen dataclasses built at its entry; and
how a decision rule is fitted (`RuleSettings`), which packaging's settings share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from omegaconf import DictConfig, OmegaConf

from allcls.config.ranges import EVALUATE, check_ranges
from allcls.config.sections import dataset_spec
from allcls.config.stage import Job, Store, settings_of
from allcls.data.preparation import DatasetSpec
from allcls.errors import AllclsError
from allcls.evaluation.transductive import NeighbourCorrection
from allcls.inference.conformal import SetKind
from allcls.inference.views import check_views

Split = Literal["train", "val", "test", "all"]


@dataclass(frozen=True)
class CalibrationSettings:
    """`calibration.temperature_scaling`: fit a temperature on validation predictions."""

    temperature_scaling: bool = True


@dataclass(frozen=True)
class ConformalSettings:
    """`conformal`: `coverage` is the wanted share of sets that hold the true class (e.g. 0.95;
    range-checked with the other settings), for every class (`sets: class_conditional`) or on
    average (`marginal`); `enabled: false` switches the sets off."""

    enabled: bool = True
    coverage: float = 0.95
    sets: SetKind = "class_conditional"


@dataclass(frozen=True)
class OodSettings:
    """`ood`: the out-of-distribution gate; at most `max_rejected` of the validation cells are
    rejected; its statistics are fitted on at most `train_cells` training cells (drawn per class)."""

    enabled: bool = True
    max_rejected: float = 0.02
    train_cells: int = 2000
    probes: bool = True  # measure it on images that are not cells (allcls.evaluation.probes)


@dataclass(frozen=True)
class ReferralSettings:
    """`referral`: the classes whose miss matters (`protect`: a class or a list; null: none) and the
    rate at which their cells may be cleared as another class."""

    protect: tuple[str, ...] | None = None
    max_miss_rate: float = 0.05


@dataclass(frozen=True)
class RuleSettings:
    coverage: float | None  # None: no prediction sets
    sets: SetKind = "class_conditional"
    referral: ReferralSettings = field(default_factory=ReferralSettings)
    ood: OodSettings = field(default_factory=OodSettings)
    seed: int = 0


@dataclass(frozen=True)
class TTASettings:
    """`tta`: average predictions over these views of each image (None: every view)."""

    enabled: bool = False
    views: tuple[str, ...] | None = None


@dataclass(frozen=True)
class GradcamSettings:
    """`gradcam`: `samples_per_class` random samples of each true class (misclassified first), or
    exactly `sample_ids`."""

    enabled: bool = False
    samples_per_class: int = 4
    sample_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class EvaluateSettings:
    job: Job
    store: Store
    run_id: str | None = None  # a training or ensemble run...
    ckpt_path: str | None = None  # ...or a checkpoint file (then `dataset` is needed)
    experiment_name: str | None = None  # for a checkpoint's evaluation run
    split: Split = "test"
    dataset: DatasetSpec | None = None  # another dataset to evaluate on; None: the model's own
    dataset_root: str | None = None  # where the model's own dataset is on this machine
    class_map: dict[str, str] | None = None  # another dataset's class -> the model's class
    bootstrap: int = 1000
    seed: int = 0
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    conformal: ConformalSettings = field(default_factory=ConformalSettings)
    referral: ReferralSettings = field(default_factory=ReferralSettings)
    ood: OodSettings = field(default_factory=OodSettings)
    tta: TTASettings = field(default_factory=TTASettings)
    transductive_correction: NeighbourCorrection = field(default_factory=NeighbourCorrection)
    gradcam: GradcamSettings = field(default_factory=GradcamSettings)
    batch_size: int | None = None  # None: 16 on a CPU, 64 on a GPU
    num_workers: int | None = None  # None: sized with torch's threads to the cores (allcls.machine)
    device: Literal["auto", "cpu"] = "auto"

    @classmethod
    def of(cls, cfg: DictConfig) -> EvaluateSettings:
        check_ranges(cfg, EVALUATE)
        dataset = None
        if cfg.get("dataset") is not None:
            if OmegaConf.is_missing(cfg.dataset, "root"):
                raise AllclsError(f"dataset.root is not set: pass dataset.root=/path/to/{cfg.dataset.name}.")
            dataset = dataset_spec(cfg.dataset, split=cfg.split != "all")
        settings = settings_of(cls, cfg, dataset=dataset)
        check_views(settings.tta.views)  # checked even when off: a typo should not wait for tta.enabled=true
        return settings

    @property
    def rule(self) -> RuleSettings:
        """How the decision rule is fitted (allcls.evaluation.safeguards)."""
        conformal = self.conformal
        return RuleSettings(conformal.coverage if conformal.enabled else None, conformal.sets, self.referral, self.ood,
                            self.seed)

    @property
    def views(self) -> list[str]:
        return check_views(self.tta.views)

    @property
    def target_name(self) -> str:
        """The experiment a checkpoint's evaluation goes to when experiment_name is not set."""
        return self.experiment_name or (self.dataset.name if self.dataset is not None else "evaluation")

