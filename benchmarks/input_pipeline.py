"""Input-pipeline throughput: allcls's training loaders against a plain torchvision + PIL pipeline
doing the same work on C-NMC-sized images (450x450 24-bit BMP -> 224 px, flips and right-angle
rotations, ImageNet normalisation, batches of 32), all with allcls's default DataLoader settings,
side by side in one run, with the memory-copy limit of the same bytes beside them.

    python benchmarks/input_pipeline.py [--images 512] [--epochs 3] [--workers N]

allcls's batch pipeline leaves the float conversion, normalisation and the flips to the device.
With no GPU here, its rows are measured twice: the loader alone (what a GPU would be fed, its
device step not run) and with the device step run on this CPU, in the main process beside the
loader workers. Prints Markdown tables (images/second per epoch) and the machine it ran on.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from allcls.config.entry import prepare_process  # noqa: E402

prepare_process()  # as the entry points do: no update check when albumentations is imported below

import albumentations as A  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision.transforms as T  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision.datasets.folder import pil_loader  # noqa: E402

from allcls.data.datamodule import CellDataModule  # noqa: E402
from allcls.data.preparation import ImageChecks, PreparedDataset, prepare_dataset  # noqa: E402
from allcls.data.readers import CNMCReader  # noqa: E402
from allcls.data.splits import SplitSpec  # noqa: E402
from allcls.data.synthetic import SyntheticSpec, materialise  # noqa: E402
from allcls.data.transforms import InputSpec  # noqa: E402
from allcls.machine import default_num_workers  # noqa: E402

SPEC = InputSpec(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
BATCH = 32
BASIC = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=1.0)]  # conf/augmentation/basic.yaml


class RandomRightAngle:
    """torchvision has no RandomRotate90; this is the same augmentation for PIL images."""

    def __call__(self, image):
        return image.rotate(90 * random.randrange(4))


class PlainDataset(Dataset):
    """What a plain script does: PIL opens each file, torchvision transforms it."""

    def __init__(self, samples, classes):
        self.items = [(s.path, classes.index(s.label)) for s in samples]
        self.transform = T.Compose([
            T.Resize((SPEC.size, SPEC.size)), T.RandomHorizontalFlip(), T.RandomVerticalFlip(), RandomRightAngle(),
            T.ToTensor(), T.Normalize(SPEC.mean, SPEC.std),
        ])

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        path, label = self.items[index]
        return self.transform(pil_loader(path)), label


def plain_loader(dataset: PreparedDataset, workers: int) -> DataLoader:
    # allcls's loader settings (CellDataModule._loader): one worker per core, persistent workers.
    return DataLoader(PlainDataset(dataset.split_samples("train"), list(dataset.classes)), batch_size=BATCH,
                      shuffle=True, num_workers=workers, persistent_workers=workers > 0)


def allcls_module(dataset: PreparedDataset, workers: int | None, pipeline: str, cache_dir: Path | None = None):
    module = CellDataModule(dataset, SPEC, augmentations=BASIC, batch_size=BATCH, num_workers=workers,
                            pipeline=pipeline, cache_dir=str(cache_dir) if cache_dir else None)
    module.prepare_data()
    module.setup()
    return module


def rates(loader: DataLoader, epochs: int, step=None) -> list[float]:
    """Images per second of each epoch; `step` turns each batch into the network's input."""
    result = []
    for _ in range(epochs):
        start, seen = time.perf_counter(), 0
        for images, _ in loader:
            if step is not None:
                images = step(images)
            seen += len(images)
        result.append(seen / (time.perf_counter() - start))
    return result


def memcpy_rates(count: int, epochs: int) -> list[float]:
    """The limit: copying the same bytes (uint8 images at the input size) batch by batch, in RAM."""
    source = np.random.default_rng(0).integers(0, 256, (count, SPEC.size, SPEC.size, 3), dtype=np.uint8)
    batch = np.empty((BATCH, SPEC.size, SPEC.size, 3), np.uint8)
    result = []
    for _ in range(epochs):
        start = time.perf_counter()
        for first in range(0, count, BATCH):
            chunk = source[first:first + BATCH]
            batch[:len(chunk)] = chunk
        result.append(count / (time.perf_counter() - start))
    return result


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):  # not Linux: keep platform's answer
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (f"{cpu}, {default_num_workers()} usable core(s), torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="about this many 450x450 BMPs")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None,
                        help="loader workers (default: allcls's choice; the baseline gets one per core)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="allcls-bench-"))
    try:
        per_subject = 16  # two of the three folds train: about --images training images
        subjects = max(3, round(args.images * 1.5 / (2 * per_subject)))
        root = materialise(SyntheticSpec(layout="cnmc", image_size=450, subjects_per_class=subjects,
                                         cells_per_subject=per_subject, test_subjects_per_class=1), work / "data")
        folds = SplitSpec(hints={"fold_0": "train", "fold_1": "train", "fold_2": "val", "prelim_test": "test"})
        dataset = prepare_dataset(CNMCReader(root), folds, ImageChecks(verify_images=False))
        count = len(dataset.split_samples("train"))
        plain_workers = default_num_workers() if args.workers is None else args.workers
        print(f"{count} images of 450x450 BMP -> {SPEC.size} px, flips and right-angle rotations, batch {BATCH}; "
              f"loader workers: {plain_workers} for the baseline, "
              f"{'allcls defaults' if args.workers is None else args.workers} for allcls\nMachine: {machine()}\n")

        per_sample = allcls_module(dataset, args.workers, "per_sample")
        batch = allcls_module(dataset, args.workers, "batch")
        started = time.perf_counter()
        packed = allcls_module(dataset, args.workers, "batch", work / "cache")
        packing = time.perf_counter() - started

        def device_step(module):
            return lambda images: module.model_input(images, train=True)

        results = {
            "torchvision + PIL (baseline)": rates(plain_loader(dataset, plain_workers), args.epochs),
            "allcls per-sample pipeline (albumentations, `data.pipeline=per_sample`)":
                rates(per_sample.train_dataloader(), args.epochs),
            "allcls batch pipeline, loader alone (uint8)": rates(batch.train_dataloader(), args.epochs),
            "allcls batch pipeline + device step on this CPU":
                rates(batch.train_dataloader(), args.epochs, device_step(batch)),
            "allcls packed cache, loader alone (uint8)": rates(packed.train_dataloader(), args.epochs),
            "allcls packed cache + device step on this CPU":
                rates(packed.train_dataloader(), args.epochs, device_step(packed)),
            "limit: memcpy of the same bytes (uint8, in RAM)": memcpy_rates(count, args.epochs),
        }
        baseline = results["torchvision + PIL (baseline)"]
        epochs = " | ".join(f"epoch {i + 1} img/s" for i in range(args.epochs))
        print(f"| pipeline | {epochs} | vs baseline (last epoch) |")
        print("|" + "---|" * (args.epochs + 2))
        for name, values in results.items():
            cells = " | ".join(f"{value:,.0f}" for value in values)
            print(f"| {name} | {cells} | {values[-1] / baseline[-1]:.2f}x |")
        print(f"\nPacking the {count} images into the cache (once, before epoch 1): {packing:.1f} s "
              f"({count / packing:,.0f} img/s). allcls's loader workers: {per_sample.num_workers} per-sample, "
              f"{batch.num_workers} batch, {packed.num_workers} packed")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
