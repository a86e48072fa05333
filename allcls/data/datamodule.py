"""The LightningDataModule: a prepared dataset's splits -> Datasets -> DataLoaders. Preparing the
dataset (reading, checking, splitting) happens before, in allcls.data.preparation."""

from __future__ import annotations

from typing import Mapping, Sequence

import lightning as L
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler, get_worker_info

from allcls.cores import default_num_workers
from allcls.data import imbalance as balancing
from allcls.data.image_cache import DecodedImageCache
from allcls.data.images import read_image
from allcls.data.preparation import PreparedDataset
from allcls.data.readers import Sample
from allcls.data.splits import SPLITS
from allcls.data.transforms import InputSpec, build_transform


class CellDataset(Dataset):
    """Images of one split: (CHW float tensor, class index) pairs, decoded and transformed on access."""

    def __init__(self, samples: Sequence[Sample], class_to_index: Mapping[str, int], transform,
                 cache: DecodedImageCache | None = None):
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
    """Serves the splits of a prepared dataset through albumentations pipelines sized for the
    backbone: augmented and balanced for train, plain and in sample-id order for val and test."""

    def __init__(
        self,
        dataset: PreparedDataset,
        input_spec: InputSpec,
        augmentations: Sequence = (),
        roi_crop: bool = False,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int | None = None,
        imbalance: str = "none",
        seed: int = 0,
        cache_dir: str | None = None,
    ):
        super().__init__()
        self.prepared = dataset
        self.input_spec = input_spec
        self.augmentations = list(augmentations)
        self.roi_crop = roi_crop
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.imbalance = balancing.check_strategy(imbalance)
        self.seed = seed  # the run's: augmentation, oversampling and weighted sampling draw from it
        self.cache = DecodedImageCache(cache_dir, input_spec, roi_crop) if cache_dir else None
        self.datasets: dict[str, CellDataset] = {}

    @property
    def classes(self) -> list[str]:
        return list(self.prepared.classes)

    def loss_weights(self) -> list[float] | None:
        """Per-class loss weights when data.imbalance=class_weights, else None."""
        if self.imbalance != "class_weights":
            return None
        return balancing.loss_weights(self.prepared.labels(self.prepared.split_samples("train")), len(self.classes))

    # --- Lightning hooks ------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
            self.split_dataset(split)

    def split_dataset(self, split: str) -> CellDataset:
        """The Dataset of one split (built once): augmented for train, plain for the others."""
        if split not in self.datasets:
            index = self.prepared.class_index()
            samples = self.prepared.split_samples(split)
            if split == "train" and self.imbalance == "oversample":
                order = balancing.oversample(self.prepared.labels(samples), self.seed)
                samples = [samples[i] for i in order]
            augment = self.augmentations if split == "train" else ()
            transform = build_transform(self.input_spec, self.roi_crop, augment, resized=self.cache is not None,
                                        seed=self.seed)
            self.datasets[split] = CellDataset(samples, index, transform, self.cache)
        return self.datasets[split]

    def train_dataloader(self) -> DataLoader:
        dataset = self.split_dataset("train")
        sampler = None
        if self.imbalance == "weighted_sampler":
            weights = balancing.sample_weights(dataset.labels, len(self.classes))
            generator = torch.Generator().manual_seed(self.seed)
            sampler = WeightedRandomSampler(torch.as_tensor(weights), len(weights), replacement=True,
                                            generator=generator)
        return self._loader(dataset, self.batch_size, shuffle=sampler is None, sampler=sampler, drop_last=False)

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")

    def eval_dataloader(self, split: str) -> DataLoader:
        """Every sample of `split` exactly once, in sample-id order (no augmentation, no shuffle)."""
        return self._loader(self.split_dataset(split), self.eval_batch_size, shuffle=False)

    def _loader(self, dataset: Dataset, batch_size: int, **kwargs) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            worker_init_fn=seed_worker if self.num_workers > 0 else None,
            **kwargs,
        )


def seed_worker(worker_id: int) -> None:
    """A loader worker's random streams, derived from the run's seed, the process rank and the
    worker: Lightning's for torch, numpy and random, then the albumentations pipeline's own, which
    would otherwise be the same in every worker (each starts from a copy of one pipeline)."""
    pl_worker_init_function(worker_id)
    get_worker_info().dataset.transform.set_random_seed(torch.initial_seed() % 2**32)
