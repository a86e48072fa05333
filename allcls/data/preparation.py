"""Preparing a dataset, in one function: a reader's samples -> every image checked -> byte-identical
duplicates grouped -> split (or an earlier run's manifest) -> the split's hash.

The result is a frozen PreparedDataset. The datamodule builds loaders from it, evaluation picks
samples from it, and neither changes it: data flows one way.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

from allcls.data.images import check_images
from allcls.data.readers import DatasetReader, Sample
from allcls.data.splits import (
    ALL,
    SplitSpec,
    assign_splits,
    build_manifest,
    check_no_leakage,
    check_not_empty,
    group_ids,
    manifest_csv,
    manifest_hash,
    read_manifest,
)
from allcls.errors import AllclsError
from allcls.machine import default_num_workers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageChecks:
    """How the dataset's files are checked before any split (`dataset.verify_images`, ...).

    verify_images: decode every image once first: report broken ones by path, and group
    byte-identical duplicates so that no split shares one. skip_unreadable_images: leave broken
    images out (listed in the run) instead of stopping.
    """

    verify_images: bool = True
    skip_unreadable_images: bool = False

    @classmethod
    def of(cls, dataset: Mapping[str, Any]) -> ImageChecks:
        """The checks a `dataset` config section sets (configs of older runs may set none)."""
        return cls(**{f.name: bool(dataset[f.name]) for f in fields(cls) if f.name in dataset})


@dataclass(frozen=True, eq=False)  # eq would compare DataFrames
class PreparedDataset:
    """A dataset ready to use: its checked samples (by sample id), their split, and its hash."""

    name: str
    root: Path
    classes: tuple[str, ...]
    samples: tuple[Sample, ...]
    manifest: pd.DataFrame
    split_hash: str
    unreadable: tuple[tuple[str, str], ...] = ()  # (path, problem) of images left out

    def class_index(self) -> dict[str, int]:
        return {name: index for index, name in enumerate(self.classes)}

    def split_samples(self, split: str) -> list[Sample]:
        """The samples of one split ("all": every sample), ordered by sample id."""
        known = sorted(set(self.manifest["split"]) | {ALL})
        if split not in known:
            raise AllclsError(f"Unknown split {split!r}: this dataset has {known}.")
        if split == ALL:
            return list(self.samples)
        in_split = set(self.manifest.loc[self.manifest["split"] == split, "sample_id"])
        return [s for s in self.samples if s.sample_id in in_split]

    def labels(self, samples: Sequence[Sample], index: Mapping[str, int] | None = None) -> list[int]:
        """Class indices of `samples`: this dataset's, or those of another model's classes (`index`)."""
        index = self.class_index() if index is None else index
        return [index[s.label] for s in samples]

    def write_manifest(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(manifest_csv(self.manifest))
        return path


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset as its config section (conf/dataset/) describes it: its reader, the crop its images
    get, how its files are checked, and how it is split (None: no split, every image evaluated)."""

    name: str
    reader: DatasetReader
    roi_crop: bool = False
    checks: ImageChecks = ImageChecks()
    split: SplitSpec | None = None

    def prepare(self) -> PreparedDataset:
        return prepare_dataset(self.reader, self.split, self.checks)


def prepare_dataset(reader: DatasetReader, split: SplitSpec | None, checks: ImageChecks = ImageChecks(),
                    ) -> PreparedDataset:
    """Read, check, group and split a dataset. `split=None` makes no split: every sample is in
    the one evaluation set "all" (a model evaluated on another dataset)."""
    samples = reader.read()
    hashes: list[str | None] = [None] * len(samples)
    unreadable: list[tuple[str, str]] = []
    if checks.verify_images:
        samples, hashes, unreadable = _checked(samples, checks.skip_unreadable_images)
    if not samples:
        raise AllclsError(f"No readable images in the {reader.name} dataset at {reader.root}.")
    classes = reader.class_names(samples)
    check_labels(samples, hashes, classes, trains=split is not None,
                 where=f"the {reader.name} dataset at {reader.root}")

    groups = group_ids(samples, hashes)
    leaky = split is not None and split.by == "image"
    if leaky:
        log.warning("dataset.split.by=image: THIS SPLIT LEAKS. Cells of one patient (and identical images) land in "
                    "train and test alike, so every score of this run is inflated. It exists to measure that "
                    "(benchmarks/leakage.py); never report its numbers as a model's.")
        groups = [s.sample_id for s in samples]
    if split is None:
        manifest = build_manifest(samples, groups, [ALL] * len(samples))
    elif split.manifest:
        manifest = read_manifest(split.manifest, samples)
        _check_manifest_labels(manifest, samples)
    else:
        manifest = build_manifest(samples, groups, assign_splits(samples, groups, split))
    if split is not None:
        if not leaky:
            check_no_leakage(manifest)
        check_not_empty(manifest)
    prepared = PreparedDataset(reader.name, reader.root, tuple(classes),
                               tuple(sorted(samples, key=lambda s: s.sample_id)), manifest, manifest_hash(manifest),
                               tuple(unreadable))
    counts = manifest.groupby(["split", "label"]).size().unstack(fill_value=0)
    log.info("Split %s of %s (%d images):\n%s", prepared.split_hash, reader.name, len(manifest), counts)
    return prepared


def check_labels(samples: Sequence[Sample], hashes: Sequence[str | None], classes: Sequence[str], trains: bool,
                 where: str) -> None:
    """Labels a run can trust: at least two classes to train on, names the run's tags can carry
    (they join classes with ','), and no image whose bytes appear under two classes."""
    if trains and len(set(classes)) < 2:
        raise AllclsError(f"{where} has only the class(es) {list(classes)}: a classifier needs at least two. "
                          "Check dataset.root and dataset.layout.")
    odd = [name for name in classes if "," in name or not name.strip()]
    if odd:
        raise AllclsError(f"{where} has class name(s) {odd}: rename them without ',' (run tags list classes "
                          "separated by commas) and not blank.")
    labels_of: dict[str, dict[str, str]] = {}
    for sample, digest in zip(samples, hashes, strict=True):
        if digest is not None:
            labels_of.setdefault(digest, {}).setdefault(sample.label, sample.path)
    conflicts = [paths for paths in labels_of.values() if len(paths) > 1]
    if conflicts:
        listing = "; ".join(" = ".join(f"{path} ({label})" for label, path in paths.items()) for paths in conflicts[:5])
        raise AllclsError(f"{len(conflicts)} image(s) appear with the same bytes under different classes in {where}, "
                          f"so their labels cannot both be right: {listing}{'; ...' if len(conflicts) > 5 else ''}. "
                          "Remove the wrong copy of each.")


def _checked(samples: list[Sample], skip_unreadable: bool):
    """The readable samples, their content hashes, and (path, problem) of the others."""
    checks = check_images([s.path for s in samples], workers=default_num_workers())
    bad = [(c.path, c.problem) for c in checks if c.problem]
    if bad and not skip_unreadable:
        listing = "; ".join(f"{path}: {problem}" for path, problem in bad[:10])
        raise AllclsError(
            f"{len(bad)} image(s) cannot be read ({listing}{'; ...' if len(bad) > 10 else ''}). "
            "Replace or remove them, or set dataset.skip_unreadable_images=true to leave them out "
            "(they are then listed in the run's data/unreadable_images.txt).")
    if bad:
        log.warning("Leaving out %d unreadable image(s), e.g. %s", len(bad), bad[0][0])
    keep = [c.problem is None for c in checks]
    return ([s for s, ok in zip(samples, keep, strict=True) if ok],
            [c.sha1 for c, ok in zip(checks, keep, strict=True) if ok], bad)


def _check_manifest_labels(manifest: pd.DataFrame, samples: Sequence[Sample]) -> None:
    on_disk = {s.sample_id: s.label for s in samples}
    wrong = [sid for sid, label in zip(manifest["sample_id"], manifest["label"], strict=True) if on_disk[sid] != label]
    if wrong:
        raise AllclsError(f"The split manifest labels {len(wrong)} image(s) differently from the dataset "
                          f"(e.g. {wrong[0]}): it belongs to another version of the data.")
