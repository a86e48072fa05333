"""Input-pipeline throughput: allcls's loader against a plain torchvision ImageFolder + PIL pipeline
doing the same work on C-NMC-sized images (450x450 24-bit BMP -> 224 px, flips and right-angle
rotations, ImageNet normalisation, batches of 32), both with allcls's default DataLoader settings.

    python benchmarks/input_pipeline.py [--images 512] [--epochs 3]

Prints a Markdown table (images/second per epoch) and the machine it ran on.
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

import albumentations as A  # noqa: E402
import torch  # noqa: E402
import torchvision.transforms as T  # noqa: E402
from torch.utils.data import ConcatDataset, DataLoader  # noqa: E402
from torchvision.datasets import ImageFolder  # noqa: E402

import allcls  # noqa: E402,F401  (before albumentations: no update check)
from allcls.cores import default_num_workers  # noqa: E402
from allcls.data.datamodule import CellDataset  # noqa: E402
from allcls.data.image_cache import DecodedImageCache  # noqa: E402
from allcls.data.readers import CNMCReader  # noqa: E402
from allcls.data.synthetic import SyntheticSpec, materialise  # noqa: E402
from allcls.data.transforms import InputSpec, build_transform  # noqa: E402

SPEC = InputSpec(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
BATCH = 32


class RandomRightAngle:
    """torchvision has no RandomRotate90; this is the same augmentation for PIL images."""

    def __call__(self, image):
        return image.rotate(90 * random.randrange(4))


def torchvision_dataset(root: Path):
    transform = T.Compose([
        T.Resize((SPEC.size, SPEC.size)), T.RandomHorizontalFlip(), T.RandomVerticalFlip(), RandomRightAngle(),
        T.ToTensor(), T.Normalize(SPEC.mean, SPEC.std),
    ])
    folds = sorted((root / "training_data").iterdir())
    return ConcatDataset([ImageFolder(str(fold), transform=transform) for fold in folds])


def allcls_dataset(root: Path, cache_dir: str | None = None):
    samples = CNMCReader(root, include_prelim_test=False).read()
    augment = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=1.0)]
    cache = DecodedImageCache(cache_dir, SPEC, roi_crop=False) if cache_dir else None
    transform = build_transform(SPEC, roi_crop=False, augmentations=augment, resized=cache is not None)
    return CellDataset(samples, {"hem": 0, "all": 1}, transform, cache)


def loader(dataset, workers: int) -> DataLoader:
    # allcls's defaults (CellDataModule._loader): one worker per core, persistent workers.
    return DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers,
                      persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())


def epochs_per_second(data: DataLoader, epochs: int) -> list[float]:
    rates = []
    for _ in range(epochs):
        start, seen = time.perf_counter(), 0
        for images, _ in data:
            seen += len(images)
        rates.append(seen / (time.perf_counter() - start))
    return rates


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
    parser.add_argument("--workers", type=int, default=default_num_workers())
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="allcls-bench-"))
    try:
        per_subject = 16
        subjects = max(3, args.images // (2 * per_subject))
        root = materialise(SyntheticSpec(layout="cnmc", image_size=450, subjects_per_class=subjects,
                                         cells_per_subject=per_subject, test_subjects_per_class=1), work / "data")
        pipelines = {
            "torchvision ImageFolder + PIL": torchvision_dataset(root),
            "allcls (OpenCV decode, albumentations)": allcls_dataset(root),
            "allcls + data.cache_dir (decoded, resized images)": allcls_dataset(root, str(work / "cache")),
        }
        print(f"{len(pipelines['torchvision ImageFolder + PIL'])} images of 450x450 BMP -> {SPEC.size} px, "
              f"batch {BATCH}, {args.workers} loader worker(s)\nMachine: {machine()}\n")
        results = {name: epochs_per_second(loader(data, args.workers), args.epochs) for name, data in pipelines.items()}
        baseline = results["torchvision ImageFolder + PIL"]
        epochs = " | ".join(f"epoch {i + 1} img/s" for i in range(args.epochs))
        header = f"| pipeline | {epochs} | speed-up (last epoch) |"
        print(header)
        print("|" + "---|" * (args.epochs + 2))
        for name, rates in results.items():
            cells = " | ".join(f"{rate:,.0f}" for rate in rates)
            print(f"| {name} | {cells} | {rates[-1] / baseline[-1]:.2f}x |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
