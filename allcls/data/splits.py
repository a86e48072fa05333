"""Subject-grouped train/val/test splits, their manifest, its hash, and the leakage check.

A *group* is what must never straddle two splits: one subject (patient), joined with every sample
whose bytes are identical to one of its samples. Samples without a subject are grouped by content
alone, so byte-identical duplicates (the 4-class dataset has 40 pairs) stay together.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pandas as pd

from allcls.data.readers import Sample
from allcls.errors import AllclsError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
ALL = "all"  # no split: every sample (evaluating a model on another dataset)
MANIFEST_COLUMNS = ["sample_id", "subject", "group", "split", "label"]


SplitBy = Literal["subject", "image"]


@dataclass(frozen=True)
class SplitSpec:
    """How a dataset is split (`dataset.split` in the configs).

    Samples whose split hint (e.g. a C-NMC fold) is in `hints` go to that split, the rest to train;
    a split the hints leave empty gets whole groups drawn from train, stratified by class, about
    `<split>_fraction` of the data. `seed` draws them. `manifest`: an earlier run's
    split_manifest.csv, reused exactly (then nothing else here matters).

    `by`: `subject` (always, but for one measurement) keeps a subject's cells, and identical
    images, in one split. `image` splits images at random, as most ALL papers did: cells of one
    patient then sit on both sides, and the scores are inflated (benchmarks/leakage.py measures by
    how much). It exists only for that measurement, and warns loudly.
    """

    hints: Mapping[str, str] = field(default_factory=dict)
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    manifest: str | None = None
    by: SplitBy = "subject"

    def __post_init__(self):
        if self.by not in get_args(SplitBy):  # also for a SplitSpec made in code, not read by `typed`
            raise AllclsError(f"dataset.split.by={self.by!r} is not one of {list(get_args(SplitBy))}.")
        bad = {hint: split for hint, split in self.hints.items() if split not in SPLITS}
        if bad:
            raise AllclsError(f"dataset.split.hints maps {bad} to unknown splits: use {list(SPLITS)}.")
        for name in ("val_fraction", "test_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise AllclsError(f"dataset.split.{name}={getattr(self, name)} must be at least 0 and below 1.")
        if self.val_fraction + self.test_fraction >= 1:
            raise AllclsError("dataset.split.val_fraction + test_fraction = "
                              f"{self.val_fraction + self.test_fraction:g} leaves nothing to train on: "
                              "keep their sum below 1 (e.g. 0.15 and 0.15).")


def group_ids(samples: Sequence[Sample], content_hashes: Sequence[str | None]) -> list[str]:
    """One group id per sample: samples sharing a subject or identical bytes share a group."""
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    keys = []
    for sample, digest in zip(samples, content_hashes, strict=True):
        own = [f"subject:{sample.subject}"] if sample.subject else []
        own += [f"content:{digest[:12]}"] if digest else []
        own = own or [f"sample:{sample.sample_id}"]
        for other in own[1:]:
            parent[find(other)] = find(own[0])
        keys.append(own[0])
    roots = [find(key) for key in keys]
    # Name a group after a subject where it has one: it reads better in the manifest.
    names: dict[str, str] = {}
    for key in sorted(parent):
        if key.startswith("subject:"):
            names.setdefault(find(key), key.removeprefix("subject:"))
    return [names.get(root, root) for root in roots]


def assign_splits(samples: Sequence[Sample], groups: Sequence[str], spec: SplitSpec) -> list[str]:
    """The split of every sample, as `spec` says (see SplitSpec)."""
    hints = spec.hints if spec.by == "subject" else {}  # an image split ignores folds too
    splits = [hints.get(sample.split_hint, "train") if sample.split_hint else "train" for sample in samples]
    rng = np.random.default_rng(spec.seed)
    for split, fraction in (("test", spec.test_fraction), ("val", spec.val_fraction)):
        if split in splits or fraction <= 0:
            continue
        members: dict[str, list[int]] = defaultdict(list)
        for index, (group, current) in enumerate(zip(groups, splits, strict=True)):
            if current == "train":
                members[group].append(index)
        by_class: dict[str, list[str]] = defaultdict(list)
        for group, indices in sorted(members.items()):
            label = Counter(samples[i].label for i in indices).most_common(1)[0][0]
            by_class[label].append(group)
        for label, class_groups in sorted(by_class.items()):
            want = fraction * sum(sample.label == label for sample in samples)
            order = rng.permutation(len(class_groups))
            taken = 0
            for position in order[:-1]:  # always leave one group of the class in train
                if taken >= want:
                    break
                for index in members[class_groups[position]]:
                    splits[index] = split
                taken += len(members[class_groups[position]])
    return splits


def build_manifest(samples: Sequence[Sample], groups: Sequence[str], splits: Sequence[str]) -> pd.DataFrame:
    manifest = pd.DataFrame({
        "sample_id": [s.sample_id for s in samples],
        "subject": [s.subject for s in samples],
        "group": list(groups),
        "split": list(splits),
        "label": [s.label for s in samples],
    })
    return manifest.sort_values("sample_id", ignore_index=True)


def check_no_leakage(manifest: pd.DataFrame) -> None:
    """Refuse a split where a subject or a group of identical images sits in more than one split."""
    for column in ("subject", "group"):
        spread = manifest.dropna(subset=[column]).groupby(column)["split"].nunique()
        leaks = spread[spread > 1]
        if len(leaks):
            examples = []
            for key in leaks.index[:5]:
                counts = manifest.loc[manifest[column] == key, "split"].value_counts().to_dict()
                examples.append(f"{key} {counts}")
            raise AllclsError(
                f"The split leaks: {len(leaks)} {column}(s) have images in more than one split "
                f"({'; '.join(examples)}). Every {column} must sit in one split: fix dataset.split.hints "
                "or the manifest in dataset.split.manifest."
            )


def check_not_empty(manifest: pd.DataFrame) -> None:
    for split in SPLITS:
        if not (manifest["split"] == split).any():
            raise AllclsError(
                f"The {split} split is empty ({len(manifest)} samples in all). Set dataset.split."
                f"{split}_fraction above 0, map a split hint to {split} in dataset.split.hints, "
                "or use a dataset with more subjects.")


def manifest_hash(manifest: pd.DataFrame) -> str:
    """A short content hash of the manifest: runs with equal hashes saw identical splits."""
    return hashlib.sha256(manifest_csv(manifest).encode()).hexdigest()[:16]


def manifest_csv(manifest: pd.DataFrame) -> str:
    buffer = io.StringIO()
    manifest[MANIFEST_COLUMNS].to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue()


def read_manifest(path: str | Path, samples: Sequence[Sample]) -> pd.DataFrame:
    """A manifest written by an earlier run, checked against the samples on disk now."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise AllclsError(f"Split manifest {path} does not exist: check dataset.split.manifest.")
    manifest = pd.read_csv(path, dtype=str, keep_default_na=False).replace({"": None})
    missing_columns = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing_columns:
        raise AllclsError(f"Split manifest {path} has no column(s) {missing_columns}: is it an allcls manifest?")
    on_disk, listed = {s.sample_id for s in samples}, set(manifest["sample_id"])
    if on_disk != listed:
        only_disk, only_listed = sorted(on_disk - listed), sorted(listed - on_disk)
        raise AllclsError(
            f"Split manifest {path} does not match the dataset: {len(only_disk)} image(s) are not in it "
            f"(e.g. {only_disk[:3]}) and {len(only_listed)} listed image(s) are missing (e.g. {only_listed[:3]}). "
            "Use the manifest of this dataset, or drop dataset.split.manifest to make a new split.")
    bad = sorted(set(manifest["split"]) - set(SPLITS))
    if bad:
        raise AllclsError(f"Split manifest {path} has unknown split names {bad}: use {list(SPLITS)}.")
    return manifest[MANIFEST_COLUMNS].sort_values("sample_id", ignore_index=True)
