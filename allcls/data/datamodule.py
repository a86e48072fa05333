"""The LightningDataModule: a dataset reader's samples -> checked images -> split -> DataLoaders."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import albumentations as A
import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from allcls.data import imbalance as balancing
from allcls.data.images import ImageReadError, check_images, read_image
from allcls.data.readers import DatasetReader, Sample
from allcls.data.splits import (ALL, SPLITS, assign_splits, build_manifest, check_no_leakage, check_not_empty,
                                group_ids, manifest_csv, manifest_hash, read_manifest)
from allcls.data.transforms import InputSpec, build_transform, preprocessing
from allcls.errors import AllclsError

log = logging.getLogger(__name__)


class CellDataset(Dataset):
    """Images of one split: (CHW float tensor, class index) pairs, decoded and transformed on access."""

    def __init__(self, samples: Sequence[Sample], class_to_index: Mapping[str, int], transform,
                 cache: "DecodedImageCache | None" = None):
        self.paths = [s.path for s in samples]
        self.labels = [class_to_index[s.label] for s in samples]
        self.transform = transform
        self.cache = cache

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.paths[index]
        image = self.cache.load(path) if self.cache else read_image(path)
        return self.transform(image=image)["image"], self.labels[index]


class CellDataModule(L.LightningDataModule):
    """Reads a dataset, checks every image, makes (or reloads) the subject-grouped split, and serves
    each split through albumentations pipelines sized for the backbone.

    Call `prepare()` once per process before building the model: it fixes the classes, the split
    and its hash. Lightning's `setup()` then only builds the Dataset objects.

    `split=None` makes no split: the whole dataset is one evaluation set, "all" (evaluating a model
    on another dataset). `label_index` maps the dataset's class names to another model's class
    indices (default: the dataset's own class order).
    """

    def __init__(
        self,
        reader: DatasetReader,
        input_spec: InputSpec,
        split: Mapping[str, Any] | None,
        augmentations: Sequence = (),
        roi_crop: bool = False,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int | None = None,
        imbalance: str = "none",
        imbalance_seed: int = 0,
        verify_images: bool = True,
        skip_unreadable_images: bool = False,
        cache_dir: str | None = None,
        label_index: Mapping[str, int] | None = None,
    ):
        super().__init__()
        self.reader = reader
        self.input_spec = input_spec
        self.split_config = None if split is None else dict(split)
        self.label_index = dict(label_index) if label_index is not None else None
        self.augmentations = list(augmentations)
        self.roi_crop = roi_crop
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.imbalance = balancing.check_strategy(imbalance)
        self.imbalance_seed = imbalance_seed
        self.verify_images = verify_images
        self.skip_unreadable_images = skip_unreadable_images
        self.cache = DecodedImageCache(cache_dir, input_spec, roi_crop) if cache_dir else None
        self.samples: list[Sample] = []
        self.manifest: pd.DataFrame | None = None
        self.split_hash: str | None = None
        self.unreadable: list[tuple[str, str]] = []
        self.datasets: dict[str, CellDataset] = {}

    # --- preparing the split --------------------------------------------------------------------

    @property
    def classes(self) -> list[str]:
        return list(self.reader.classes or [])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def prepare(self) -> None:
        if self.manifest is not None:
            return
        samples = self.reader.read()
        hashes: list[str | None] = [None] * len(samples)
        if self.verify_images:
            checks = check_images([s.path for s in samples], workers=default_num_workers())
            bad = [(c.path, c.problem) for c in checks if c.problem]
            if bad and not self.skip_unreadable_images:
                listing = "; ".join(f"{path}: {problem}" for path, problem in bad[:10])
                raise AllclsError(
                    f"{len(bad)} image(s) cannot be read ({listing}{'; ...' if len(bad) > 10 else ''}). "
                    "Replace or remove them, or set data.skip_unreadable_images=true to leave them out "
                    "(they are then listed in the run's data/unreadable_images.txt).")
            if bad:
                log.warning("Leaving out %d unreadable image(s), e.g. %s", len(bad), bad[0][0])
            self.unreadable = bad
            keep = [c.problem is None for c in checks]
            samples = [s for s, ok in zip(samples, keep) if ok]
            hashes = [c.sha1 for c, ok in zip(checks, keep) if ok]
        if not samples:
            raise AllclsError(f"No readable images in the {self.reader.name} dataset at {self.reader.root}.")

        groups = group_ids(samples, hashes)
        if self.split_config is None:
            manifest = build_manifest(samples, groups, [ALL] * len(samples))
        elif self.split_config.get("manifest"):
            manifest = read_manifest(self.split_config["manifest"], samples)
            _check_manifest_labels(manifest, samples)
        else:
            splits = assign_splits(samples, groups, self.split_config.get("hints") or {},
                                   float(self.split_config.get("val_fraction", 0.15)),
                                   float(self.split_config.get("test_fraction", 0.15)),
                                   int(self.split_config.get("seed", 0)))
            manifest = build_manifest(samples, groups, splits)
        if self.split_config is not None:
            check_no_leakage(manifest)
            check_not_empty(manifest)
        self.samples = sorted(samples, key=lambda s: s.sample_id)
        self.manifest, self.split_hash = manifest, manifest_hash(manifest)
        counts = manifest.groupby(["split", "label"]).size().unstack(fill_value=0)
        log.info("Split %s of %s (%d images):\n%s", self.split_hash, self.reader.name, len(manifest), counts)

    def write_manifest(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(manifest_csv(self._prepared_manifest()))
        return path

    def split_samples(self, split: str) -> list[Sample]:
        """The samples of one split ("all": every sample), ordered by sample id."""
        manifest = self._prepared_manifest()
        known = sorted(set(manifest["split"]) | {ALL})
        if split not in known:
            raise AllclsError(f"Unknown split {split!r}: this dataset has {known}.")
        if split == ALL:
            return list(self.samples)
        in_split = set(manifest.loc[manifest["split"] == split, "sample_id"])
        return [s for s in self.samples if s.sample_id in in_split]

    def class_index(self) -> dict[str, int]:
        """Class name -> label index (the model's, when label_index was given)."""
        if self.label_index is not None:
            return dict(self.label_index)
        return {name: index for index, name in enumerate(self.classes)}

    def loss_weights(self) -> list[float] | None:
        """Per-class loss weights when data.imbalance=class_weights, else None."""
        if self.imbalance != "class_weights":
            return None
        labels = [self.class_index()[s.label] for s in self.split_samples("train")]
        return balancing.loss_weights(labels, self.num_classes)

    def _prepared_manifest(self) -> pd.DataFrame:
        if self.manifest is None:
            raise RuntimeError("CellDataModule.prepare() must run before the split is used")
        return self.manifest

    # --- Lightning hooks ------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        self.prepare()
        if self.split_config is not None:
            for split in SPLITS:
                self.dataset(split)

    def dataset(self, split: str) -> CellDataset:
        """The Dataset of one split (built once): augmented for train, plain for the others."""
        if split not in self.datasets:
            self.prepare()
            index = self.class_index()
            samples = self.split_samples(split)
            if split == "train" and self.imbalance == "oversample":
                order = balancing.oversample([index[s.label] for s in samples], self.imbalance_seed)
                samples = [samples[i] for i in order]
            augment = self.augmentations if split == "train" else ()
            transform = build_transform(self.input_spec, self.roi_crop, augment, resized=self.cache is not None)
            self.datasets[split] = CellDataset(samples, index, transform, self.cache)
        return self.datasets[split]

    def train_dataloader(self) -> DataLoader:
        dataset = self.dataset("train")
        sampler = None
        if self.imbalance == "weighted_sampler":
            weights = balancing.sample_weights(dataset.labels, self.num_classes)
            generator = torch.Generator().manual_seed(self.imbalance_seed)
            sampler = WeightedRandomSampler(torch.as_tensor(weights), len(weights), replacement=True,
                                            generator=generator)
        return self._loader(dataset, self.batch_size, shuffle=sampler is None, sampler=sampler, drop_last=False)

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")

    def eval_dataloader(self, split: str) -> DataLoader:
        """Every sample of `split` exactly once, in sample-id order (no augmentation, no shuffle)."""
        return self._loader(self.dataset(split), self.eval_batch_size, shuffle=False)

    def _loader(self, dataset: Dataset, batch_size: int, **kwargs) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            **kwargs,
        )


def default_num_workers() -> int:
    """One loader worker per available core, up to 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def _check_manifest_labels(manifest: pd.DataFrame, samples: Sequence[Sample]) -> None:
    on_disk = {s.sample_id: s.label for s in samples}
    wrong = [sid for sid, label in zip(manifest["sample_id"], manifest["label"]) if on_disk[sid] != label]
    if wrong:
        raise AllclsError(f"The split manifest labels {len(wrong)} image(s) differently from the dataset "
                          f"(e.g. {wrong[0]}): it belongs to another version of the data.")


class DecodedImageCache:
    """Opt-in disk cache of decoded, cropped and resized images (uint8 .npy files).

    Decoding a 450x450 BMP and shrinking it costs more than reading a small array back, so epochs
    after the first read the cache. Entries are keyed by the file's path, size and modification
    time and by the preprocessing settings: a changed image or input size never hits a stale entry.
    Files are written atomically (temporary name, then rename), so parallel workers can share it.
    """

    def __init__(self, cache_dir: str | os.PathLike, spec: InputSpec, roi_crop: bool):
        settings = f"{spec.size}|{int(roi_crop)}|v1".encode()
        self.folder = Path(cache_dir).expanduser() / hashlib.sha1(settings).hexdigest()[:12]
        self.folder.mkdir(parents=True, exist_ok=True)
        self.preprocess = A.Compose(preprocessing(spec, roi_crop))

    def load(self, path: str) -> np.ndarray:
        try:
            stat = os.stat(path)
        except OSError as error:
            raise ImageReadError.for_file(path, error.strerror or str(error)) from None
        key = hashlib.sha1(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
        entry = self.folder / f"{key}.npy"
        with contextlib.suppress(FileNotFoundError, ValueError, EOFError):  # missing or damaged: rebuilt below
            return np.load(entry)
        image = self.preprocess(image=read_image(path))["image"]
        partial = entry.with_name(f"{key}.{os.getpid()}.tmp.npy")
        np.save(partial, image)
        os.replace(partial, entry)
        return image
