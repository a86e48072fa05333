"""What an evaluation reads: the data the model was trained on (`OwnData`), or another dataset whose
classes are mapped onto the model's (`OtherDataset`). Both give the samples of a split labelled
with the model's class indices, say which crop each member's input gets, and what the run already
logged for them; neither reads an image before it is needed."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from allcls.config.sections import dataset_spec
from allcls.data.preparation import DatasetSpec, PreparedDataset
from allcls.data.splits import SplitSpec
from allcls.errors import AllclsError
from allcls.evaluation.settings import EvaluateSettings
from allcls.evaluation.sources import ModelSource
from allcls.inference.members import Member
from allcls.inference.predictor import Predictor
from allcls.machine import inference_workers
from allcls.predictions import make_table
from allcls.tracking.tracker import Tracker


@dataclass(frozen=True)
class EvaluationSet:
    """The samples of one split, in sample-id order, labelled with the model's class indices."""

    dataset: str
    split: str
    sample_ids: list[str]
    subjects: list[str | None]
    paths: list[str]
    labels: np.ndarray

    def table(self, probabilities: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
        """The prediction table (allcls.predictions) of these samples."""
        return make_table(self.sample_ids, self.subjects, self.labels, probabilities, classes)


def _evaluation_set(data: PreparedDataset, split: str, index: Mapping[str, int]) -> EvaluationSet:
    samples = data.split_samples(split)
    return EvaluationSet(data.name, split, [s.sample_id for s in samples], [s.subject for s in samples],
                         [s.path for s in samples], np.asarray(data.labels(samples, index), dtype=np.int64))


class OwnData:
    """The data the source's models were trained on, split exactly as their split manifest says
    (an ensemble's members share dataset and split). Its images are read on first use only: the
    predictions a run logged need none of them."""

    def __init__(self, source: ModelSource, dataset_root: str | None):
        if source.trained_on is None:
            raise AllclsError("ckpt_path needs the data to evaluate on: pass dataset=<name> dataset.root=<path>.")
        self.source, self.dataset_root = source, dataset_root

    @property
    def dataset_name(self) -> str:
        return self.source.tags.get("dataset", "")

    @property
    def split_hash(self) -> str | None:
        return self.source.tags.get("split_hash")

    def has_split(self, split: str) -> bool:
        return True

    def logged_table(self, tracker: Tracker, split: str, workdir: Path) -> pd.DataFrame | None:
        """The prediction table the evaluated run logged for `split`, if it did."""
        return self.source.logged_table(tracker, split, workdir)

    @functools.cached_property
    def data(self) -> PreparedDataset:
        section, manifest = self.source.trained_on, self.source.manifest
        assert section is not None and manifest is not None  # a source with a training record (__init__)
        if self.dataset_root is None and section.get("root") in (None, "???"):
            raise AllclsError(f"dataset.root is not set: pass dataset.root=/path/to/{section['name']}.")
        return dataset_spec(section, self.dataset_root, SplitSpec(manifest=str(manifest))).prepare()

    def samples(self, split: str) -> EvaluationSet:
        return _evaluation_set(self.data, split, self.data.class_index())

    def roi_crop(self, member: Member) -> bool:
        """Each member is fed as it was trained."""
        return member.preprocessing.roi_crop


class OtherDataset:
    """Another dataset (domain shift): every image (split=all) or a split made with its own split
    settings, each of its classes mapped onto one of the model's."""

    def __init__(self, dataset: DatasetSpec, class_map: Mapping[str, str] | None, model_classes: Sequence[str]):
        self.dataset = dataset
        self.class_map, self.model_classes = dict(class_map or {}), list(model_classes)

    @property
    def dataset_name(self) -> str:
        return self.data.name

    split_hash = None  # its split is not the one the model was selected on

    def has_split(self, split: str) -> bool:
        return self.dataset.split is not None  # split=all made no split: there is no validation split to fit on

    def logged_table(self, tracker: Tracker, split: str, workdir: Path) -> None:
        return None  # nothing was logged for this dataset

    @functools.cached_property
    def data(self) -> PreparedDataset:
        return self.dataset.prepare()

    @functools.cached_property
    def label_index(self) -> dict[str, int]:
        return label_index(list(self.data.classes), self.model_classes, self.class_map)

    def samples(self, split: str) -> EvaluationSet:
        return _evaluation_set(self.data, split, self.label_index)

    def roi_crop(self, member: Member) -> bool:
        """The dataset's own setting: cropping follows how the images were taken."""
        return self.dataset.roi_crop


Target = OwnData | OtherDataset


def make_target(settings: EvaluateSettings, source: ModelSource) -> Target:
    """Another dataset when the settings name one (`dataset=...`), else the source's own data."""
    if settings.dataset is not None:
        return OtherDataset(settings.dataset, settings.class_map, source.classes)
    return OwnData(source, settings.dataset_root)


def label_index(dataset_classes: list[str], model_classes: list[str], class_map: dict[str, str]) -> dict[str, int]:
    """Dataset class name -> the model's class index, through `class_map` (default: same name)."""
    mapping = {c: class_map.get(c, c) for c in dataset_classes}
    unmapped = [c for c, target in mapping.items() if target not in model_classes]
    if unmapped:
        raise AllclsError(
            f"The dataset's class(es) {unmapped} are not classes of the model {model_classes}. Map each one to a "
            f"model class, e.g. class_map.{unmapped[0]}={model_classes[0]}, or evaluate a model trained on them.")
    return {c: model_classes.index(target) for c, target in mapping.items()}


def predictor_for(source: ModelSource, target: Target, tracker: Tracker, workdir: Path, device: str = "auto",
                  batch_size: int | None = None, num_workers: int | None = None) -> Predictor:
    """The source's networks, each fed the input its backbone expects with the crop the target gives it."""
    chosen = torch.device("cuda" if torch.cuda.is_available() and device != "cpu" else "cpu")
    members = [replace(m, preprocessing=replace(m.preprocessing, roi_crop=target.roi_crop(m))) for m in source.members]
    networks = source.networks(tracker, workdir, chosen)
    return Predictor(members, networks, source.classes, source.rule, chosen,
                     batch_size or (64 if chosen.type == "cuda" else 16), inference_workers(num_workers, chosen))
