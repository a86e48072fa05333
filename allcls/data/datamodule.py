"""The LightningDataModule: a prepared dataset's splits -> Datasets -> DataLoaders -> the network's
input on the device. Preparing the dataset (reading, checking, splitting) happens before, in
allcls.data.preparation.

Two input pipelines (`data.pipeline`; docs/data.md, "Input pipeline"):
- batch: loaders carry uint8 images (decoded and resized per image, or gathered from the packed
  cache per batch); augmentation, the float conversion and normalisation run on the device, per batch.
- per_sample: albumentations augments and normalises each training image in the loader workers,
  for presets with transforms that have no batch form (affine, colour, blur).
Evaluation splits always take the first: they are not augmented.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, get_args

import albumentations as A
import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler, default_collate, get_worker_info

from allcls.data import imbalance as balancing
from allcls.data.batch_transforms import BatchAugmentation, lacks_batch_form
from allcls.data.images import read_image
from allcls.data.normalisation import Normalisation
from allcls.data.packed_cache import PackedImages, packed_images
from allcls.data.preparation import PreparedDataset
from allcls.data.preprocessing import InputSpec, preprocess
from allcls.data.readers import Sample
from allcls.data.splits import SPLITS
from allcls.data.transforms import build_transform, seed_pipeline
from allcls.errors import AllclsError
from allcls.machine import default_num_workers

Pipeline = Literal["auto", "batch", "per_sample"]
PIPELINES: tuple[Pipeline, ...] = get_args(Pipeline)


class CellDataset(Dataset):
    """Images of one split, each decoded and preprocessed (crop, resize) on access: (uint8 H x W x 3
    tensor, class index), or with `transform` (the per-sample albumentations pipeline) what it makes."""

    def __init__(self, samples: Sequence[Sample], class_to_index: Mapping[str, int], spec: InputSpec,
                 roi_crop: bool, transform: A.Compose | None = None):
        self.paths = [s.path for s in samples]
        self.labels = [class_to_index[s.label] for s in samples]
        self.spec, self.roi_crop, self.transform = spec, roi_crop, transform
        self.collate: Callable = default_collate

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> np.ndarray:
        return preprocess(read_image(self.paths[index]), self.spec, self.roi_crop)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.image(index)
        if self.transform is not None:
            return self.transform(image=image)["image"], self.labels[index]
        return torch.from_numpy(image), self.labels[index]


class PackedCellDataset(CellDataset):
    """Images of one split from its packed array (allcls.data.packed_cache). Without a per-sample
    `transform`, a whole batch is one gather (`__getitems__`, which DataLoader calls with a batch's
    indices), written straight into shared memory when a loader worker reads it."""

    def __init__(self, samples: Sequence[Sample], class_to_index: Mapping[str, int], spec: InputSpec,
                 roi_crop: bool, packed: PackedImages, rows: Sequence[int] | np.ndarray,
                 transform: A.Compose | None = None):
        super().__init__(samples, class_to_index, spec, roi_crop, transform)
        self.packed, self.rows = packed, np.asarray(rows, dtype=np.int64)
        self.label_array = torch.as_tensor(self.labels, dtype=torch.int64)
        self.collate = default_collate if transform is not None else _already_collated

    def image(self, index: int) -> np.ndarray:
        return self.packed[int(self.rows[index])]

    def __getitems__(self, indices: list[int]):
        if self.transform is not None:
            return [self[i] for i in indices]
        size = self.spec.size
        images = torch.empty((len(indices), size, size, 3), dtype=torch.uint8)
        if get_worker_info() is not None:
            images.share_memory_()  # filled in place: the worker's queue then passes a handle, not the bytes
        self.packed.gather(self.rows[indices], out=images.numpy())
        return images, self.label_array[indices]


def _already_collated(batch):
    return batch


def choose_pipeline(requested: str, augmentations: Sequence[A.BasicTransform]) -> Literal["batch", "per_sample"]:
    """`data.pipeline`: auto -> batch where every training augmentation has a batch form."""
    if requested not in PIPELINES:
        raise AllclsError(f"data.pipeline={requested!r} is not a pipeline: use one of {list(PIPELINES)}.")
    missing = lacks_batch_form(augmentations)
    if requested == "batch" and missing:
        raise AllclsError(f"data.pipeline=batch cannot apply {', '.join(missing)} per batch (it applies flips, "
                          "transposes and right-angle rotations): use data.pipeline=auto, which picks the per-sample "
                          "pipeline for this augmentation.")
    if requested == "auto":
        return "per_sample" if missing else "batch"
    return requested


class CellDataModule(L.LightningDataModule):
    """Serves the splits of a prepared dataset sized for the backbone: augmented and balanced for
    train, plain and in sample-id order for val and test, normalised on the device."""

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
        pipeline: Pipeline = "auto",
    ):
        super().__init__()
        self.prepared = dataset
        self.input_spec = input_spec
        self.augmentations = list(augmentations)
        self.roi_crop = roi_crop
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.imbalance = balancing.check_strategy(imbalance)
        self.seed = seed  # the run's: augmentation, oversampling and weighted sampling draw from it
        self.cache_dir = cache_dir
        self.pipeline = choose_pipeline(pipeline, self.augmentations)
        if num_workers is None:
            # A packed batch is one memory copy, read fastest where it is used: worker processes
            # would add more (shared memory, a queue) than they save, 3-4x slower measured here.
            num_workers = 0 if cache_dir and self.pipeline == "batch" else default_num_workers()
        self.num_workers = num_workers
        self.normalisation = Normalisation(input_spec)
        self.batch_augmentation: BatchAugmentation | None = None  # made on first use: it draws per process rank
        self.datasets: dict[str, CellDataset] = {}
        self.packed: dict[str, PackedImages] = {}

    @property
    def classes(self) -> list[str]:
        return list(self.prepared.classes)

    def describe(self) -> str:
        """Which input pipeline serves the training images, for the log and the run's params."""
        cache = "packed cache" if self.cache_dir else "decoded per epoch"
        cache += f", {self.num_workers} loader worker(s)"
        if self.pipeline == "batch":
            return f"batch ({cache}; augmented and normalised on the device)"
        return f"per_sample ({cache}; albumentations in the loader workers)"

    def loss_weights(self) -> list[float] | None:
        """Per-class loss weights when data.imbalance=class_weights, else None."""
        if self.imbalance != "class_weights":
            return None
        return balancing.loss_weights(self.prepared.labels(self.prepared.split_samples("train")), len(self.classes))

    # --- Lightning hooks ------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """With a packed cache: write each split's array once (Lightning calls this in one process
        per machine; the others wait in `setup`, then read it)."""
        if self.cache_dir:
            for split in SPLITS:
                self._packed(split)

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
            self.split_dataset(split)

    def split_dataset(self, split: str) -> CellDataset:
        """The Dataset of one split (built once): augmented for train, plain for the others."""
        if split not in self.datasets:
            index = self.prepared.class_index()
            samples = self.prepared.split_samples(split)
            rows = np.arange(len(samples))
            if split == "train" and self.imbalance == "oversample":
                rows = np.asarray(balancing.oversample(self.prepared.labels(samples), self.seed))
            transform = None
            if split == "train" and self.pipeline == "per_sample":
                transform = build_transform(self.input_spec, self.roi_crop, self.augmentations, resized=True,
                                            seed=self.seed)
            served = [samples[i] for i in rows]
            if self.cache_dir:
                self.datasets[split] = PackedCellDataset(served, index, self.input_spec, self.roi_crop,
                                                         self._packed(split), rows, transform)
            else:
                self.datasets[split] = CellDataset(served, index, self.input_spec, self.roi_crop, transform)
        return self.datasets[split]

    def _packed(self, split: str) -> PackedImages:
        """The split's packed array, found (or written) once per process: `prepare_data` and `setup`
        both ask, and each look-up reads every image file's size and modification time."""
        if split not in self.packed:
            assert self.cache_dir is not None  # asked for only when the images are cached
            paths = [s.path for s in self.prepared.split_samples(split)]
            self.packed[split] = packed_images(self.cache_dir, f"{self.prepared.name}-{split}", paths,
                                               self.input_spec, self.roi_crop)
        return self.packed[split]

    def train_dataloader(self) -> DataLoader:
        dataset = self.split_dataset("train")
        sampler = None
        if self.imbalance == "weighted_sampler":
            weights = balancing.sample_weights(dataset.labels, len(self.classes))
            generator = torch.Generator().manual_seed(self.seed)
            # torch types the weights as Sequence[float]; it takes a tensor (its own torch.as_tensor)
            sampler = WeightedRandomSampler(torch.as_tensor(weights), len(weights),  # type: ignore[arg-type]
                                            replacement=True, generator=generator)
        return self._loader(dataset, self.batch_size, shuffle=sampler is None, sampler=sampler, drop_last=False)

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")

    def eval_dataloader(self, split: str) -> DataLoader:
        """Every sample of `split` exactly once, in sample-id order (no augmentation, no shuffle);
        its batches become the network's input through `model_input`."""
        return self._loader(self.split_dataset(split), self.eval_batch_size, shuffle=False)

    def _loader(self, dataset: CellDataset, batch_size: int, **kwargs) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            collate_fn=dataset.collate,
            pin_memory=self._on_cuda(),  # page-locked batches copy to the GPU asynchronously
            persistent_workers=self.num_workers > 0,
            worker_init_fn=seed_worker if self.num_workers > 0 else None,
            **kwargs,
        )

    def _on_cuda(self) -> bool:
        """Whether batches go to a CUDA device: the trainer's device, not merely a GPU in the machine
        (trainer=cpu on a GPU machine pins nothing)."""
        trainer = self.trainer
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        assert self.trainer is not None  # the trainer calls this hook
        return self.model_input(images, train=self.trainer.training), labels

    def model_input(self, images: torch.Tensor, train: bool = False) -> torch.Tensor:
        """A loader's batch, on its device, as the network takes it: uint8 images are augmented
        (training, batch pipeline) and normalised here; the per-sample pipeline's come normalised."""
        if images.dtype != torch.uint8:
            return images
        images = self.normalisation.channels_first(images)
        if train and self.pipeline == "batch" and self.augmentations:
            images = self._batch_augmentation()(images)  # in place, on channels_first's copy
        return self.normalisation(images)

    def _batch_augmentation(self) -> BatchAugmentation:
        if self.batch_augmentation is None:
            rank = self.trainer.global_rank if self.trainer is not None else 0
            seed = int(np.random.SeedSequence([self.seed, rank]).generate_state(1)[0])  # each DDP rank its own draws
            self.batch_augmentation = BatchAugmentation(self.augmentations, seed)
        return self.batch_augmentation


def seed_worker(worker_id: int) -> None:
    """A loader worker's random streams, derived from the run's seed, the process rank and the
    worker: Lightning's for torch, numpy and random, then the albumentations pipeline's own (the
    per-sample pipeline), which would otherwise be the same in every worker (each starts from a
    copy of one pipeline)."""
    pl_worker_init_function(worker_id)
    info = get_worker_info()
    assert info is not None  # it runs in a loader worker
    dataset: Any = info.dataset  # any dataset with a `transform` (a per-sample pipeline, or None)
    transform = dataset.transform
    if transform is not None:
        seed_pipeline(transform, torch.initial_seed() % 2**32)
