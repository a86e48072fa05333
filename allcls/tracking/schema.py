"""What allcls runs carry in MLflow: the stage names, the provenance every run gets, and the tags
and params of each stage. Later stages find runs by these names (`tags.stage = 'train'`,
`tags.sweep_id`, the data tags an ensemble's members must share): they are defined here only.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from allcls import __version__
from allcls.config.hydra_job import JobInfo
from allcls.metrics.names import metric_safe

if TYPE_CHECKING:
    from allcls.data.preparation import PreparedDataset

# The `stage` tag of each kind of run.
TRAIN = "train"
ENSEMBLE = "ensemble"
ENSEMBLE_SCHEME = "ensemble_scheme"  # one child of an ensemble run per weighting scheme compared
EVALUATE = "evaluate"
SWEEP = "sweep"  # the run of a whole `-m` launch; its jobs' runs nest under it (allcls.jobs.sweep_run)

# Runs whose predictions are compared or combined must agree on these tags.
DATA_TAGS = ("dataset", "classes", "split_hash")

PACKAGE_DIR = Path(__file__).resolve().parent


def git_commit() -> str:
    """The commit of the allcls code that ran, with '-dirty' if it has uncommitted changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PACKAGE_DIR, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PACKAGE_DIR,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def provenance_tags(stage: str, job: JobInfo) -> dict[str, str]:
    """Where a run came from: its stage, its sweep (and job number in it), the code and its version."""
    commit = git_commit()
    tags = {"stage": stage, "sweep_id": job.sweep_id, "git_commit": commit,
            "mlflow.source.git.commit": commit.removesuffix("-dirty"), "allcls_version": __version__,
            # the run page's Source field: the entry script (train.py, or the module of python -m)
            "mlflow.source.name": str(Path(sys.argv[0]).resolve()) if sys.argv and sys.argv[0] else "",
            "mlflow.source.type": "LOCAL"}
    if job.job_num is not None:
        tags["job_num"] = str(job.job_num)
    return tags


def data_tags(dataset: str, classes: Sequence[str], split_hash: str | None = None) -> dict[str, str]:
    tags = {"dataset": dataset, "classes": ",".join(classes)}
    if split_hash:
        tags["split_hash"] = split_hash
    return tags


# --- training ------------------------------------------------------------------------------------

def train_run_name(backbone: str, augmentation: str, seed: int) -> str:
    """`<backbone>-<augmentation>-s<seed>`, with the config choices' names (where Hydra knows them)."""
    return "-".join(part for part in (backbone, augmentation, f"s{seed}") if part)


def train_tags(dataset: PreparedDataset, backbone: str, output_dir: Path, split_by: str) -> dict[str, str]:
    tags = {**data_tags(dataset.name, dataset.classes, dataset.split_hash), "backbone": backbone,
            "output_dir": str(output_dir.resolve())}  # the job's folder, for `resume`
    if split_by == "image":
        tags["leaky_split"] = "image: cells of one patient on both sides; scores inflated"
    return tags


@dataclass(frozen=True)
class TrainParams:
    """A training run's params: the small flat set of settings people compare runs by (the whole
    config is the artifact config/config.yaml)."""

    dataset: str
    backbone: str
    pretrained: bool
    input_size: int
    augmentation: str
    imbalance: str
    batch_size: int
    input_pipeline: str  # the one that served the training images: batch or per_sample
    packed_cache: bool
    optimizer: str
    lr: float | None
    weight_decay: float | None
    scheduler: str
    freeze_backbone_epochs: int
    max_epochs: int | None
    precision: Any
    accelerator: Any
    devices: Any
    strategy: str
    seed: int
    split_seed: int
    split_by: str
    n_train: int
    n_val: int
    n_test: int

    def as_params(self) -> dict[str, object]:
        return asdict(self)


# --- ensembles -----------------------------------------------------------------------------------

def ensemble_tags(shared_data_tags: dict[str, str], chosen_scheme: str, selection_reason: str, run_ids: Sequence[str],
                  names: Sequence[str]) -> dict[str, str]:
    """`selection_reason`: why the rule chose that scheme, in one sentence."""
    return {**shared_data_tags, "chosen_scheme": chosen_scheme, "selection_reason": selection_reason,
            "member_run_ids": ",".join(run_ids), "member_names": ",".join(names)}


def weight_params(names: Sequence[str], weights: Iterable[float]) -> dict[str, str]:
    """`weight/<member>`: the weight of each member, as params (MLflow compares params side by side)."""
    return {f"weight/{metric_safe(name)}": f"{w:.4f}" for name, w in zip(names, weights, strict=True)}


def ensemble_params(metric: str, rule: str, combine_setting: str, cv_folds: int, bootstrap: int, seed: int,
                    schemes: int, chosen_scheme: str, selection_rule: str, names: Sequence[str],
                    weights: Iterable[float]) -> dict[str, object]:
    """`combine`: how the chosen ensemble combines its members (`vote` for majority_vote);
    `combine_setting`: the `combine` the averaging schemes were configured with."""
    return {"metric": metric, "combine": rule, "combine_setting": combine_setting, "cv_folds": cv_folds,
            "bootstrap": bootstrap, "seed": seed, "n_members": len(names), "n_schemes": schemes,
            "chosen_scheme": chosen_scheme, "selection_rule": selection_rule, **weight_params(names, weights)}


def scheme_tags(family: str, rule: str, rank: int, tied: bool, chosen: bool) -> dict[str, str]:
    """`tied`: within one standard error of the best-ranked scheme (allcls.ensemble.choice)."""
    return {"stage": ENSEMBLE_SCHEME, "scheme_family": family, "combine": rule, "rank": str(rank),
            "tied_with_best": str(tied).lower(), "chosen": str(chosen).lower()}


# --- evaluation ----------------------------------------------------------------------------------

def evaluation_run_name(split: str, dataset: str, with_tta: bool, transductive: bool = False) -> str:
    return f"eval-{split}-{dataset}" + ("-tta" if with_tta else "") + ("-transductive" if transductive else "")


def evaluation_tags(kind: str, dataset: str, classes: Sequence[str], split: str, evaluated_run_id: str | None,
                    split_hash: str | None, transductive: str | None = None) -> dict[str, str]:
    """`transductive`: the method of a step that used the whole evaluated batch at once, if any."""
    tags = {"evaluated_kind": kind, **data_tags(dataset, classes, split_hash), "split": split}
    if evaluated_run_id:
        tags["evaluated_run_id"] = evaluated_run_id
    if transductive:
        tags["transductive"] = transductive
    return tags


def evaluation_params(evaluated: str, split: str, dataset: str, samples: int, origin: str,
                      tta_views: Sequence[str] | None, temperature: str, bootstrap: int, seed: int,
                      transductive: str | None = None, prediction_sets: str = "off") -> dict[str, object]:
    return {"evaluated": evaluated, "split": split, "dataset": dataset, "n_samples": samples, "predictions": origin,
            "tta": ",".join(tta_views) if tta_views else "off", "temperature": temperature,
            "bootstrap": bootstrap, "seed": seed, "transductive": transductive or "off",
            "prediction_sets": prediction_sets}
