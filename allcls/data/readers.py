"""Readers that turn a dataset root, in its ORIGINAL published layout, into a list of samples.

A reader never moves, renames or rewrites the user's files. Each one checks the layout it expects
and, where the root is not it, says what it found and where the right root probably is.
"""

from __future__ import annotations

import abc
import csv
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from allcls.data.images import is_image_file
from allcls.errors import AllclsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One image. `sample_id` is its path relative to the dataset root (the key of every table)."""

    path: str
    sample_id: str
    label: str
    subject: str | None = None
    split_hint: str | None = None


class DatasetReader(abc.ABC):
    """Base of the readers: a named dataset at `root` whose class names, in index order, are `classes`
    (None: the labels found in the data, sorted; see `class_names`). Reading changes nothing on the
    reader: the same reader reads the same samples every time."""

    name: str = "dataset"

    def __init__(self, root: str | Path, classes: Sequence[str] | None = None):
        self.root_given = "" if root is None else str(root).strip()
        self.root = Path(self.root_given).expanduser()
        self.classes = list(classes) if classes is not None else None

    @abc.abstractmethod
    def read(self) -> list[Sample]:
        """All labelled samples of the dataset, in a deterministic order."""

    def class_names(self, samples: Sequence[Sample]) -> list[str]:
        """The class names in index order: the configured ones, else the labels found, sorted."""
        return list(self.classes) if self.classes is not None else sorted({s.label for s in samples})

    # Helpers shared by the readers -----------------------------------------------------------

    def _require_root(self) -> Path:
        if self.root_given in ("", "???"):
            raise AllclsError(f"dataset.root is not set for the {self.name} dataset: pass dataset.root=/path/to/it.")
        if not self.root.exists():
            raise AllclsError(f"Dataset root {self.root} does not exist: check dataset.root.")
        if not self.root.is_dir():
            raise AllclsError(f"Dataset root {self.root} is a file, not a folder: check dataset.root.")
        return self.root.resolve()

    def _sample(self, root: Path, path: Path, label: str, subject=None, split_hint=None) -> Sample:
        return Sample(str(path), path.relative_to(root).as_posix(), label, subject, split_hint)

    def _check_classes(self, found: dict[str, int], where: Path) -> None:
        """Refuse a class list that disagrees with the data, and a class without images."""
        expected = self.classes if self.classes is not None else sorted(found)
        missing = [c for c in expected if c not in found]
        if missing:
            raise AllclsError(
                f"The {self.name} dataset at {where} has no folder for class(es) {missing} of "
                f"dataset.classes={expected} (found {sorted(found)}). "
                "Point dataset.root at the right folder or correct dataset.classes."
            )
        extra = [c for c in found if c not in expected]
        if extra:
            log.warning("Folders %s under %s are not in dataset.classes=%s and are left out.", extra, where, expected)
        empty = [c for c in expected if found[c] == 0]
        if empty:
            raise AllclsError(
                f"Class {empty[0]!r} of the {self.name} dataset has no images under {where}: "
                "add its images or remove it from dataset.classes."
            )


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


def _find_below(root: Path, name: str, depth: int = 3) -> Path | None:
    """The first folder called `name` up to `depth` levels below root (to suggest the right root)."""
    level = [root]
    for _ in range(depth):
        level = [child for folder in level for child in sorted(folder.iterdir()) if child.is_dir()]
        for folder in level:
            if folder.name == name:
                return folder
    return None


# --- C-NMC 2019 --------------------------------------------------------------------------------

CNMC_NAME = re.compile(r"^UID_(?P<subject>h?\d+)_(?P<image>\d+)_(?P<cell>\d+)_(?P<cls>all|hem)\.bmp$", re.IGNORECASE)
CNMC_PRELIM_DIR = "validation_data/C-NMC_test_prelim_phase_data"
CNMC_PRELIM_LABELS = "validation_data/C-NMC_test_prelim_phase_data_labels.csv"
CNMC_PRELIM_HEADER = ["Patient_ID", "new_names", "labels"]


def cnmc_subject(file_name: str) -> str | None:
    """Subject id from a C-NMC file name: '57' for UID_57_..., 'H3' for UID_h3_... (normal subjects)."""
    match = CNMC_NAME.match(file_name)
    return match["subject"].upper() if match else None


class CNMCReader(DatasetReader):
    """C-NMC 2019: training_data/fold_{0,1,2}/{all,hem}/*.bmp, plus the preliminary test set with its
    labels CSV when present. Split hints: 'fold_0', 'fold_1', 'fold_2', 'prelim_test'."""

    name = "cnmc"

    def __init__(self, root, classes=("hem", "all"), include_prelim_test: bool = True):
        super().__init__(root, classes)
        self.include_prelim_test = include_prelim_test

    def read(self) -> list[Sample]:
        root = self._require_root()
        training = root / "training_data"
        if not training.is_dir():
            hint = _find_below(root, "training_data")
            raise AllclsError(
                f"{root} is not a C-NMC 2019 root: it has no training_data/ folder. "
                + (f"Did you mean dataset.root={hint.parent}? " if hint else "")
                + "Expected training_data/fold_0/all/*.bmp (the layout of the Kaggle/TCIA download)."
            )
        folds = sorted(p for p in training.iterdir() if p.is_dir() and p.name.startswith("fold_"))
        if not folds:
            raise AllclsError(f"{training} holds no fold_0/, fold_1/, fold_2/ folders: "
                              "is this the C-NMC training_data?")

        samples, counts, unnamed = [], {c: 0 for c in ("hem", "all")}, 0
        for fold in folds:
            for class_dir in sorted(p for p in fold.iterdir() if p.is_dir()):
                if class_dir.name not in counts:
                    raise AllclsError(
                        f"Unexpected folder {class_dir}: C-NMC folds hold only all/ and hem/. "
                        "Move it out of the dataset, or use dataset=folder for other layouts."
                    )
                for path in _image_files(class_dir):
                    subject = cnmc_subject(path.name)
                    unnamed += subject is None
                    samples.append(self._sample(root, path, class_dir.name, subject, fold.name))
                    counts[class_dir.name] += 1
        if unnamed:
            log.warning(
                "%d C-NMC training images do not follow UID_<subject>_<image>_<cell>_<all|hem>.bmp; "
                "without a subject id each is split as its own group.", unnamed)
        self._check_classes(counts, training)
        if self.include_prelim_test:
            samples += self._read_prelim_test(root)
        return samples

    def _read_prelim_test(self, root: Path) -> list[Sample]:
        labels_csv, image_dir = root / CNMC_PRELIM_LABELS, root / CNMC_PRELIM_DIR
        if not labels_csv.is_file():
            if image_dir.is_dir():
                log.warning("%s has images but no labels file %s: the preliminary test set is left out.",
                            image_dir, labels_csv.name)
            return []
        with labels_csv.open(newline="") as handle:
            rows = list(csv.reader(handle))
        if not rows or [c.strip() for c in rows[0]] != CNMC_PRELIM_HEADER:
            raise AllclsError(
                f"{labels_csv} does not start with the header {','.join(CNMC_PRELIM_HEADER)}: "
                "is it the original C-NMC preliminary-test labels file?")
        by_label = {"1": "all", "0": "hem"}
        samples, missing = [], 0
        for line, row in enumerate(rows[1:], start=2):
            if not row:
                continue
            if len(row) != 3 or row[2].strip() not in by_label:
                raise AllclsError(f"{labels_csv} line {line} is not 'Patient_ID,new_names,labels' "
                                  f"with label 0 or 1: {row}")
            patient_id, new_name, label = (c.strip() for c in row)
            path = image_dir / new_name
            if not path.is_file():
                missing += 1
                continue
            samples.append(self._sample(root, path, by_label[label], cnmc_subject(patient_id), "prelim_test"))
        if missing:
            log.warning("%d of %d rows of %s have no image in %s; those rows are skipped.",
                        missing, len(rows) - 1, labels_csv.name, image_dir)
        return samples


# --- the 4-class "ALL image dataset" (Aria et al.) ----------------------------------------------

class ARIAReader(DatasetReader):
    """The 4-class ALL image dataset: {Original,Segmented}/{Benign,Early,Pre,Pro}/*.jpg.
    `variant` picks Original (whole smear field) or Segmented (background blacked out)."""

    name = "aria"
    VARIANTS = ("Original", "Segmented")

    def __init__(self, root, classes=("Benign", "Early", "Pre", "Pro"), variant: str = "Original"):
        super().__init__(root, classes)
        if variant not in self.VARIANTS:
            raise AllclsError(f"dataset.variant={variant!r} is not one of {list(self.VARIANTS)}.")
        self.variant = variant

    def read(self) -> list[Sample]:
        root = self._require_root()
        base = root / self.variant
        if not base.is_dir():
            subfolders = sorted(p.name for p in root.iterdir() if p.is_dir())
            if set(self.classes or []) <= set(subfolders):
                hint = (f"It holds the class folders itself: use dataset.root={root.parent} "
                        f"dataset.variant={root.name}. ")
            else:
                found = _find_below(root, self.variant)
                hint = f"Did you mean dataset.root={found.parent}? " if found else ""
            raise AllclsError(
                f"{root} is not an ALL image dataset root: it has no {self.variant}/ folder "
                f"(found {subfolders}). {hint}Expected {self.variant}/<class>/*.jpg.")
        return _read_class_folders(self, root, base)


class FolderReader(DatasetReader):
    """Any root/<class>/<image> tree. Without `classes`, the folder names (sorted) are the classes."""

    name = "folder"

    def read(self) -> list[Sample]:
        root = self._require_root()
        return _read_class_folders(self, root, root)


def _read_class_folders(reader: DatasetReader, root: Path, base: Path) -> list[Sample]:
    folders = {p.name: p for p in sorted(base.iterdir()) if p.is_dir() and not p.name.startswith(".")}
    files = {name: _image_files(folder) for name, folder in folders.items()}
    reader._check_classes({name: len(paths) for name, paths in files.items()}, base)
    classes = reader.classes if reader.classes is not None else sorted(files)
    return [reader._sample(root, path, name) for name in classes for path in files[name]]
