"""Input-pipeline throughput: allcls's training loaders against a plain PyTorch pipeline doing the
same work on C-NMC-sized images (450x450 24-bit BMP -> 224 px, flips and right-angle rotations,
ImageNet normalisation, batches of 32), all with allcls's default DataLoader settings, side by
side in one run, with the memory-copy limit of the same bytes beside them.

The baseline is what a plain script does, not torchvision's `ImageFolder` class itself (the
training split spans two C-NMC folds): a `Dataset` over the same training files that opens each
with PIL through torchvision's `pil_loader` and applies torchvision transforms (Resize,
RandomHorizontalFlip, RandomVerticalFlip, a right-angle rotation, ToTensor, Normalize), which is
the work `ImageFolder.__getitem__` does; its loader has one worker per core, persistent.

allcls's batch pipeline leaves the float conversion, normalisation and the flips to the device.
With no GPU here, its rows are measured twice: the loader alone (what a GPU would be fed, its
device step not run) and with the device step run on this CPU, in the main process beside the
loader workers. Each of --repeats rounds builds every pipeline afresh (the packed cache packed
again) and runs them in turn for --epochs epochs; each figure is the median of the rounds with
the spread, and each pipeline's speed against the baseline (last epoch) is taken round by round.

    python benchmarks/input_pipeline.py [--images 512] [--epochs 3] [--repeats 3] [--workers N]
    python benchmarks/input_pipeline.py --tiny     # seconds: what `make test` runs
"""

from __future__ import annotations

import argparse
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
from results import median_spread, record  # noqa: E402  (this folder's results file)
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision.datasets.folder import pil_loader  # noqa: E402

from allcls.data.datamodule import CellDataModule  # noqa: E402
from allcls.data.preparation import ImageChecks, PreparedDataset, prepare_dataset  # noqa: E402
from allcls.data.readers import CNMCReader  # noqa: E402
from allcls.data.splits import SplitSpec  # noqa: E402
from allcls.data.synthetic import SyntheticSpec, materialise  # noqa: E402
from allcls.data.transforms import InputSpec  # noqa: E402
from allcls.machine import default_num_workers  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
BATCH = 32
BASIC = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=1.0)]  # conf/augmentation/basic.yaml
BASELINE = "plain Dataset: PIL (torchvision's pil_loader) + torchvision transforms (baseline)"
PIPELINES = [  # (row, how it is measured)
    (BASELINE, "baseline"),
    ("allcls per-sample pipeline (albumentations, `data.pipeline=per_sample`)", "per_sample"),
    ("allcls batch pipeline, loader alone (uint8)", "batch"),
    ("allcls batch pipeline + device step on this CPU", "batch+device"),
    ("allcls packed cache, loader alone (uint8)", "packed"),
    ("allcls packed cache + device step on this CPU", "packed+device"),
    ("limit: memcpy of the same bytes (uint8, in RAM)", "memcpy"),
]


class RandomRightAngle:
    """torchvision has no RandomRotate90; this is the same augmentation for PIL images."""

    def __call__(self, image):
        return image.rotate(90 * random.randrange(4))


class PlainDataset(Dataset):
    """What a plain script does (what torchvision's ImageFolder does per item): PIL opens each file,
    torchvision transforms it."""

    def __init__(self, samples, classes, spec: InputSpec):
        self.items = [(s.path, classes.index(s.label)) for s in samples]
        self.transform = T.Compose([
            T.Resize((spec.size, spec.size)), T.RandomHorizontalFlip(), T.RandomVerticalFlip(), RandomRightAngle(),
            T.ToTensor(), T.Normalize(spec.mean, spec.std),
        ])

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        path, label = self.items[index]
        return self.transform(pil_loader(path)), label


def plain_loader(dataset: PreparedDataset, spec: InputSpec, workers: int) -> DataLoader:
    # allcls's loader settings (CellDataModule._loader): one worker per core, persistent workers.
    return DataLoader(PlainDataset(dataset.split_samples("train"), list(dataset.classes), spec), batch_size=BATCH,
                      shuffle=True, num_workers=workers, persistent_workers=workers > 0)


def allcls_module(dataset: PreparedDataset, spec: InputSpec, workers: int | None, pipeline: str,
                  cache_dir: Path | None = None):
    module = CellDataModule(dataset, spec, augmentations=BASIC, batch_size=BATCH, num_workers=workers,
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


def memcpy_rates(count: int, size: int, epochs: int) -> list[float]:
    """The limit: copying the same bytes (uint8 images at the input size) batch by batch, in RAM."""
    source = np.random.default_rng(0).integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    batch = np.empty((BATCH, size, size, 3), np.uint8)
    result = []
    for _ in range(epochs):
        start = time.perf_counter()
        for first in range(0, count, BATCH):
            chunk = source[first:first + BATCH]
            batch[:len(chunk)] = chunk
        result.append(count / (time.perf_counter() - start))
    return result


def one_round(dataset: PreparedDataset, spec: InputSpec, args, cache: Path) -> tuple[dict, float, dict]:
    """Every pipeline built afresh and run for `args.epochs` epochs, in turn: images/s per epoch of
    each, the seconds packing the cache took, and the loader workers each used."""
    count = len(dataset.split_samples("train"))
    plain_workers = default_num_workers() if args.workers is None else args.workers
    per_sample = allcls_module(dataset, spec, args.workers, "per_sample")
    batch = allcls_module(dataset, spec, args.workers, "batch")
    started = time.perf_counter()
    packed = allcls_module(dataset, spec, args.workers, "batch", cache)
    packing = time.perf_counter() - started

    def device_step(module):
        return lambda images: module.model_input(images, train=True)

    measured = {
        "baseline": lambda: rates(plain_loader(dataset, spec, plain_workers), args.epochs),
        "per_sample": lambda: rates(per_sample.train_dataloader(), args.epochs),
        "batch": lambda: rates(batch.train_dataloader(), args.epochs),
        "batch+device": lambda: rates(batch.train_dataloader(), args.epochs, device_step(batch)),
        "packed": lambda: rates(packed.train_dataloader(), args.epochs),
        "packed+device": lambda: rates(packed.train_dataloader(), args.epochs, device_step(packed)),
        "memcpy": lambda: memcpy_rates(count, spec.size, args.epochs),
    }
    workers = {"baseline": plain_workers, "per_sample": per_sample.num_workers, "batch": batch.num_workers,
               "packed": packed.num_workers}
    return {kind: measured[kind]() for _, kind in PIPELINES}, packing, workers


def spread(timing: dict, digits: int = 0, unit: str = "") -> str:
    low, high = f"{timing['min']:,.{digits}f}", f"{timing['max']:,.{digits}f}"
    return f"{timing['median']:,.{digits}f}{unit} ({low}-{high}{unit})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="about this many training images")
    parser.add_argument("--image-size", type=int, default=450, help="the BMPs' side (C-NMC's: 450)")
    parser.add_argument("--input-size", type=int, default=224, help="the network's input side")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every pipeline, built afresh each round")
    parser.add_argument("--workers", type=int, default=None,
                        help="loader workers (default: allcls's choice; the baseline gets one per core)")
    parser.add_argument("--tiny", action="store_true",
                        help="64 images of 64 px -> 32 px (3 subjects per class), 2 epochs, one round")
    args = parser.parse_args()
    if args.tiny:
        args.images, args.image_size, args.input_size, args.epochs, args.repeats = 40, 64, 32, 2, 1
    spec = InputSpec(args.input_size, MEAN, STD)

    work = Path(tempfile.mkdtemp(prefix="allcls-bench-"))
    try:
        per_subject = 16  # two of the three folds train: about --images training images
        subjects = max(3, round(args.images * 1.5 / (2 * per_subject)))
        root = materialise(SyntheticSpec(layout="cnmc", image_size=args.image_size, subjects_per_class=subjects,
                                         cells_per_subject=per_subject, test_subjects_per_class=1), work / "data")
        folds = SplitSpec(hints={"fold_0": "train", "fold_1": "train", "fold_2": "val", "prelim_test": "test"})
        dataset = prepare_dataset(CNMCReader(root), folds, ImageChecks(verify_images=False))
        count = len(dataset.split_samples("train"))
        print(f"{count} images of {args.image_size}x{args.image_size} BMP -> {spec.size} px, flips and right-angle "
              f"rotations, batch {BATCH}", flush=True)
        rounds, packings = [], []
        for repeat in range(args.repeats):
            found, packing, workers = one_round(dataset, spec, args, work / f"cache-{repeat}")
            rounds.append(found)
            packings.append(packing)
            print(f"round {repeat + 1}: " + "; ".join(f"{kind} {', '.join(f'{v:,.0f}' for v in values)}"
                                                      for kind, values in found.items()), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    pipelines = {}
    for label, kind in PIPELINES:
        pipelines[kind] = {
            "row": label,
            "epochs": [median_spread([r[kind][epoch] for r in rounds]) for epoch in range(args.epochs)],
            "vs_baseline_last_epoch": median_spread([r[kind][-1] / r["baseline"][-1] for r in rounds]),
            "rounds": [r[kind] for r in rounds]}
    packing = {"seconds": median_spread(packings), "images_per_s": median_spread([count / p for p in packings])}
    header = ["pipeline", *[f"epoch {i + 1} img/s" for i in range(args.epochs)], "vs baseline (last epoch)"]
    rows = [[found["row"], *[spread(e) for e in found["epochs"]], spread(found["vs_baseline_last_epoch"], 2, "x")]
            for found in pipelines.values()]
    packed = [["images", "packing the cache, s", "images/s"],
              [f"{count:,}", spread(packing["seconds"], 2), spread(packing["images_per_s"])]]
    setting = {"images": count, "image_size": args.image_size, "input_size": args.input_size, "batch_size": BATCH,
               "epochs": args.epochs, "repeats": args.repeats, "workers": workers, "torch": torch.__version__}
    tables = {"main": [header, *rows], "packing": packed}
    record("input_pipeline", {"pipelines": pipelines, "packing": packing}, setting, tables)
    for table in tables.values():
        print("\n".join(" | ".join(row) for row in table) + "\n")


if __name__ == "__main__":
    main()
