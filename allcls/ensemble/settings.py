"""The ensemble task's settings (conf/ensemble.yaml), as a frozen dataclass built at its entry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from omegaconf import DictConfig

from allcls.config.ranges import ENSEMBLE, check_ranges
from allcls.config.stage import Job, Store, settings_of
from allcls.errors import AllclsError


@dataclass(frozen=True)
class EnsembleSettings:
    job: Job
    store: Store
    experiment_name: str | None = None  # where the training runs are; the ensemble run goes there too
    filter: str = ""  # an MLflow filter string, ANDed with finished training runs
    sweep_id: str | None = None  # the runs of one training sweep; `latest`: the newest
    run_ids: tuple[str, ...] = ()  # or the member runs, explicitly
    metric: str = "f1_weighted"  # ranks the schemes (allcls.metrics.names.RANKING)
    combine: Literal["arithmetic", "geometric"] = "arithmetic"  # majority voting is the scheme majority_vote
    cv_folds: int = 5
    nested_cv: bool = True  # estimate the choice itself by nested cross-validation (allcls.ensemble.choice)
    bootstrap: int = 1000
    seed: int = 0
    report_top: int = 3
    schemes: dict[str, Any] = field(default_factory=dict)  # each scheme's section: allcls.ensemble.schemes

    @classmethod
    def of(cls, cfg: DictConfig) -> EnsembleSettings:
        check_ranges(cfg, ENSEMBLE)
        settings = settings_of(cls, cfg)
        repeated = sorted({run_id for run_id in settings.run_ids if settings.run_ids.count(run_id) > 1})
        if repeated:  # one model counted twice would double its weight in every scheme
            raise AllclsError(f"run_ids lists {', '.join(repeated)} more than once: give each member run once.")
        return settings
