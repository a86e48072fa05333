"""What is evaluated: a training run, an ensemble run or a bare checkpoint file, resolved into its
classes, its members (allcls.inference.members: weight, backbone, preprocessing), where each
member's checkpoint is, the training config that says how its data was prepared, and the
prediction tables it already logged."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from allcls.config.sections import plain
from allcls.errors import AllclsError
from allcls.inference.combining import Rule, check_rule
from allcls.inference.members import Member, Preprocessing
from allcls.models.backbones import BackboneSpec, input_spec, network_from_checkpoint
from allcls.models.checkpoints import read_checkpoint
from allcls.predictions import validate_table
from allcls.tracking import schema as run_schema
from allcls.tracking.tracker import MissingArtifact, Tracker

# Where a member's weights are: the id of the training run that logged its best checkpoint, or a file.
CheckpointAt = str | Path
NOT_RERUN = ("it cannot be re-run for TTA, Grad-CAM, the out-of-distribution gate or another dataset. Evaluate its "
             "logged predictions (split=val or test, tta.enabled=false, gradcam.enabled=false, ood.enabled=false)")


@dataclass
class ModelSource:
    kind: str  # "run", "ensemble" or "checkpoint"
    name: str
    classes: list[str]
    members: list[Member]
    checkpoints: list[CheckpointAt]  # member i's weights
    rule: Rule = "arithmetic"
    run: Any | None = None  # the evaluated MLflow run (an mlflow.entities.Run), when there is one
    experiment_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    # The data the members were trained on, as the (first) member's run recorded it: its `dataset`
    # section and split manifest (an ensemble's members share dataset and split). None for a checkpoint.
    trained_on: dict[str, Any] | None = None
    manifest: Path | None = None

    @property
    def split_by(self) -> str:
        """How the training data was split: `subject` (or the content, without subject ids) or `image`."""
        return str(((self.trained_on or {}).get("split") or {}).get("by", "subject"))

    @property
    def run_id(self) -> str | None:
        return self.run.info.run_id if self.run else None

    def checkpoint(self, index: int, tracker: Tracker, folder: Path, without: str = NOT_RERUN) -> Path:
        """Member `index`'s checkpoint file, downloaded from its run if need be (`without`: what a run
        without one cannot do, and what to do instead)."""
        at = self.checkpoints[index]
        if isinstance(at, Path):
            return at
        try:
            return tracker.download(at, "checkpoints/best.ckpt", folder / at)
        except MissingArtifact:
            raise AllclsError(f"Run {self.members[index].name} ({at}) has no checkpoints/best.ckpt: {without}."
                              ) from None

    def networks(self, tracker: Tracker, folder: Path, device: torch.device) -> list[nn.Module]:
        """Every member's trained network, loaded with weights_only=True (nothing is unpickled)."""
        return [network_from_checkpoint(self.checkpoint(index, tracker, folder), map_location=device)
                for index in range(len(self.members))]

    def logged_table(self, tracker: Tracker, split: str, folder: Path) -> pd.DataFrame | None:
        """The prediction table the run logged for `split`, if it has one."""
        if self.run is None or split not in ("val", "test"):
            return None
        local = tracker.download_if_present(self.run.info.run_id, f"predictions/{split}.parquet", folder / "logged")
        if local is None:
            return None
        return validate_table(pd.read_parquet(local), self.classes, where=f"predictions/{split}.parquet of {self.name}")


def resolve_source(tracker: Tracker, run_id: str | None, ckpt_path: str | None, workdir: Path) -> ModelSource:
    """The model(s) behind a run id (training or ensemble run) or a checkpoint file. `workdir`
    receives what is downloaded from MLflow."""
    if bool(run_id) == bool(ckpt_path):
        raise AllclsError("Give exactly one of run_id=<MLflow run id> and ckpt_path=<checkpoint file>.")
    if ckpt_path:
        return _from_checkpoint(Path(ckpt_path).expanduser())
    assert run_id  # exactly one of the two is given, and it is not ckpt_path
    run = tracker.get_run(run_id, hint="check run_id (and logger.tracking_uri / $MLFLOW_TRACKING_URI)")
    stage = run.data.tags.get("stage")
    if stage == run_schema.ENSEMBLE:
        return _from_ensemble_run(tracker, run, workdir)
    if stage != run_schema.TRAIN:
        raise AllclsError(f"Run {run_id} is not a training or ensemble run (stage={stage!r}): evaluate one of those.")
    config, manifest = _training_record(tracker, run, workdir)
    member = _member(run.info.run_name or run.info.run_id[:8], 1.0, config)
    return ModelSource("run", member.name, run.data.tags["classes"].split(","), [member], [run.info.run_id], run=run,
                       experiment_id=run.info.experiment_id, tags=dict(run.data.tags), trained_on=config["dataset"],
                       manifest=manifest)


def _training_record(tracker: Tracker, run, workdir: Path) -> tuple[dict[str, Any], Path]:
    """A training run's resolved config (as plain values) and split manifest."""
    folder = workdir / run.info.run_id
    try:
        config = OmegaConf.load(tracker.download(run.info.run_id, "config/config.yaml", folder))
        manifest = tracker.download(run.info.run_id, "data/split_manifest.csv", folder)
    except MissingArtifact:
        raise AllclsError(f"Run {run.info.run_id} has no config/config.yaml or data/split_manifest.csv: "
                          "is it an allcls training run that got past its start?") from None
    assert isinstance(config, DictConfig)  # the config.yaml a training job writes is a mapping
    return plain(config), manifest


def _member(name: str, weight: float, config: dict[str, Any]) -> Member:
    """A member as its training config describes it: its backbone's input, the crop its data got."""
    backbone = BackboneSpec.of(config["backbone"])
    return Member(name, weight, backbone.name,
                  Preprocessing(input_spec(backbone), bool(config["dataset"].get("roi_crop", False))))


def _from_ensemble_run(tracker: Tracker, run, workdir: Path) -> ModelSource:
    try:
        described = json.loads(tracker.download(run.info.run_id, "ensemble/members.json", workdir).read_text())
    except MissingArtifact:
        raise AllclsError(f"Ensemble run {run.info.run_id} has no ensemble/members.json.") from None
    members, checkpoints, records = [], [], []
    for entry in described["members"]:
        if entry["weight"] <= 0:
            continue  # a member without weight changes nothing: no need to load it
        config, manifest = _training_record(tracker, tracker.get_run(entry["run_id"]), workdir)
        members.append(_member(entry["name"], entry["weight"], config))
        checkpoints.append(entry["run_id"])
        records.append((config, manifest))
    return ModelSource("ensemble", run.info.run_name or run.info.run_id[:8], described["classes"], members,
                       checkpoints, rule=check_rule(described["combine"]), run=run,
                       experiment_id=run.info.experiment_id, tags=dict(run.data.tags),
                       trained_on=records[0][0]["dataset"], manifest=records[0][1])


def _from_checkpoint(path: Path) -> ModelSource:
    if not path.is_file():
        raise AllclsError(f"Checkpoint {path} does not exist: check ckpt_path.")
    hparams = read_checkpoint(path)["hyper_parameters"]
    backbone = BackboneSpec.of({**hparams["backbone"], "pretrained": False})
    member = Member(path.stem, 1.0, backbone.name, Preprocessing(input_spec(backbone)))
    return ModelSource("checkpoint", path.stem, list(hparams["class_names"]), [member], [path])
