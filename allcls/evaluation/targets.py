"""What an evaluation reads: a split of the data the model was trained on (`OwnData`), or another
dataset whose classes are mapped onto the model's (`OtherDataset`). Both give the samples of a
split labelled with the model's class indices, and say which crop each member's input gets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from allcls.config import build, typed
from allcls.data.preparation import ImageChecks, PreparedDataset, prepare_dataset
from allcls.data.splits import ALL, SplitSpec
from allcls.errors import AllclsError
from allcls.evaluation.sources import Member, ModelSource
from allcls.predictions import make_table


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


@dataclass(frozen=True)
class OwnData:
    """The data the model was trained on, split exactly as its split manifest says."""

    data: PreparedDataset

    def samples(self, split: str) -> EvaluationSet:
        return _evaluation_set(self.data, split, self.data.class_index())

    def roi_crop(self, member: Member) -> bool:
        """Each member is fed as it was trained."""
        return bool(member.train_config.dataset.roi_crop)


@dataclass(frozen=True)
class OtherDataset:
    """Another dataset (domain shift): every image (split=all) or a split made with its own split
    settings, each of its classes mapped onto one of the model's."""

    data: PreparedDataset
    label_index: dict[str, int]
    crop: bool

    def samples(self, split: str) -> EvaluationSet:
        return _evaluation_set(self.data, split, self.label_index)

    def roi_crop(self, member: Member) -> bool:
        """The dataset's own setting: cropping follows how the images were taken."""
        return self.crop


Target = OwnData | OtherDataset


def own_data(source: ModelSource, dataset_root: str | None) -> OwnData:
    """The dataset and split the source's models were trained on (the first member's: an ensemble's
    members share dataset and split). `dataset_root`: where that dataset is on this machine."""
    member = source.members[0]
    if member.train_config is None:
        raise AllclsError("A bare checkpoint has no dataset of its own: pass dataset=<name> dataset.root=<path>.")
    dataset = OmegaConf.create(OmegaConf.to_container(member.train_config.dataset))
    if dataset_root:
        dataset.reader.root = dataset_root
    if OmegaConf.is_missing(dataset, "root"):
        raise AllclsError(f"dataset.root is not set: pass dataset.root=/path/to/{dataset.name}.")
    data = prepare_dataset(build(dataset.reader), SplitSpec(manifest=str(member.manifest)), ImageChecks.of(dataset))
    return OwnData(data)


def other_dataset(dataset: DictConfig, split: str, class_map: Mapping[str, str] | None,
                  model_classes: Sequence[str]) -> OtherDataset:
    """Another dataset, split by its own settings (or not at all for split=all)."""
    if OmegaConf.is_missing(dataset, "root"):
        raise AllclsError(f"dataset.root is not set: pass dataset.root=/path/to/{dataset.name}.")
    spec = None if split == ALL else typed(SplitSpec, OmegaConf.to_container(dataset.split, resolve=True),
                                           "dataset.split")
    data = prepare_dataset(build(dataset.reader), spec, ImageChecks.of(dataset))
    return OtherDataset(data, label_index(list(data.classes), list(model_classes), dict(class_map or {})),
                        bool(dataset.roi_crop))


def label_index(dataset_classes: list[str], model_classes: list[str], class_map: dict[str, str]) -> dict[str, int]:
    """Dataset class name -> the model's class index, through `class_map` (default: same name)."""
    mapping = {c: class_map.get(c, c) for c in dataset_classes}
    unmapped = [c for c, target in mapping.items() if target not in model_classes]
    if unmapped:
        raise AllclsError(
            f"The dataset's class(es) {unmapped} are not classes of the model {model_classes}. Map each one to a "
            f"model class, e.g. class_map.{unmapped[0]}={model_classes[0]}, or evaluate a model trained on them.")
    return {c: model_classes.index(target) for c, target in mapping.items()}
