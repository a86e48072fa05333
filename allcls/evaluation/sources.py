"""What is evaluated: a training run, an ensemble run or a bare checkpoint file, resolved into its
classes, its members (checkpoint, weight, the training config that says how data was prepared)
and the prediction tables it already logged."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from allcls.errors import AllclsError
from allcls.models.checkpoints import read_checkpoint
from allcls.models.lit_classifier import LitClassifier
from allcls.predictions import validate_table
from allcls.tracking import schema as run_schema
from allcls.tracking.tracker import MissingArtifact, Tracker


@dataclass
class Member:
    """One model: where its checkpoint is (an MLflow run's artifact or a local file) and its weight."""

    name: str
    weight: float
    run_id: str | None = None
    checkpoint_file: Path | None = None
    train_config: DictConfig | None = None
    manifest: Path | None = None

    def load(self, tracker: Tracker | None, folder: Path, device: torch.device | str) -> LitClassifier:
        """The model, loaded with weights_only=True (nothing is unpickled from the file)."""
        path = self.checkpoint_file
        if path is None:
            try:
                path = tracker.download(self.run_id, "checkpoints/best.ckpt", folder / self.run_id)
            except MissingArtifact:
                raise AllclsError(f"Run {self.name} ({self.run_id}) has no checkpoints/best.ckpt: it cannot be "
                                  "re-run for TTA, Grad-CAM or another dataset. Evaluate its logged predictions "
                                  "(split=val or test, tta.enabled=false, gradcam.enabled=false).") from None
        return LitClassifier.from_checkpoint(path, map_location=device)


@dataclass
class ModelSource:
    kind: str  # "run", "ensemble" or "checkpoint"
    name: str
    classes: list[str]
    members: list[Member]
    rule: str = "arithmetic"
    run: object | None = None  # the evaluated MLflow run, when there is one
    experiment_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def run_id(self) -> str | None:
        return self.run.info.run_id if self.run else None

    def logged_table(self, tracker: Tracker, split: str, folder: Path) -> pd.DataFrame | None:
        """The prediction table the run logged for `split`, if it has one."""
        if self.run is None or split not in ("val", "test"):
            return None
        local = tracker.download_if_present(self.run_id, f"predictions/{split}.parquet", folder / "logged")
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
    try:
        run = tracker.client.get_run(run_id)
    except MlflowException:
        raise AllclsError(f"No MLflow run {run_id!r} in {tracker.tracking_uri}: check run_id "
                          "(and logger.tracking_uri / $MLFLOW_TRACKING_URI).") from None
    stage = run.data.tags.get("stage")
    if stage == run_schema.ENSEMBLE:
        return _from_ensemble_run(tracker, run, workdir)
    if stage != run_schema.TRAIN:
        raise AllclsError(f"Run {run_id} is not a training or ensemble run (stage={stage!r}): evaluate one of those.")
    member = _member_of_run(tracker, run, 1.0, workdir)
    return ModelSource("run", member.name, run.data.tags["classes"].split(","), [member], run=run,
                       experiment_id=run.info.experiment_id, tags=dict(run.data.tags))


def _member_of_run(tracker: Tracker, run, weight: float, workdir: Path) -> Member:
    folder = workdir / run.info.run_id
    try:
        config = OmegaConf.load(tracker.download(run.info.run_id, "config/config.yaml", folder))
        manifest = tracker.download(run.info.run_id, "data/split_manifest.csv", folder)
    except MissingArtifact:
        raise AllclsError(f"Run {run.info.run_id} has no config/config.yaml or data/split_manifest.csv: "
                          "is it an allcls training run that got past its start?") from None
    return Member(run.info.run_name or run.info.run_id[:8], weight, run_id=run.info.run_id,
                  train_config=config, manifest=manifest)


def _from_ensemble_run(tracker: Tracker, run, workdir: Path) -> ModelSource:
    try:
        described = json.loads(tracker.download(run.info.run_id, "ensemble/members.json", workdir).read_text())
    except MissingArtifact:
        raise AllclsError(f"Ensemble run {run.info.run_id} has no ensemble/members.json.") from None
    members = []
    for entry in described["members"]:
        if entry["weight"] <= 0:
            continue  # a member without weight changes nothing: no need to load it
        members.append(_member_of_run(tracker, tracker.client.get_run(entry["run_id"]), entry["weight"], workdir))
        members[-1].name = entry["name"]
    return ModelSource("ensemble", run.info.run_name or run.info.run_id[:8], described["classes"], members,
                       rule=described["combine"], run=run, experiment_id=run.info.experiment_id,
                       tags=dict(run.data.tags))


def _from_checkpoint(path: Path) -> ModelSource:
    if not path.is_file():
        raise AllclsError(f"Checkpoint {path} does not exist: check ckpt_path.")
    classes = list(read_checkpoint(path)["hyper_parameters"]["class_names"])
    return ModelSource("checkpoint", path.stem, classes, [Member(path.stem, 1.0, checkpoint_file=path)])
