"""CPU inference: what evaluation's Predictor gets from glibc's allocator settings and the batch size.

Predicts 224 px images with MobileNetV2 (the identity view and a flipped one, as test-time
augmentation does) through allcls's Predictor, four ways side by side, each in its own process
(the allocator setting is process-wide): batch 64 with glibc's default malloc thresholds (what
evaluation did before), batch 16 alone, the raised thresholds alone, and both (evaluation now).

    python benchmarks/cpu_inference.py [--images 256]

Prints images per second, user and system CPU seconds, and minor page faults per variant.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

VARIANTS = [  # (label, batch size, raise the allocator's thresholds)
    ("batch 64, glibc defaults (before)", 64, False),
    ("batch 16, glibc defaults", 16, False),
    ("batch 64, allocator thresholds", 64, True),
    ("batch 16, allocator thresholds (allcls)", 16, True),
]


def write_images(folder: Path, count: int) -> list[str]:
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = folder / f"{index}.jpg"
        cv2.imwrite(str(path), rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))
        paths.append(str(path))
    return paths


def measure(paths: list[str], batch_size: int, allocator: bool) -> dict:
    """One variant, in this process."""
    import torch

    from allcls.inference.members import Member, Preprocessing
    from allcls.inference.predictor import Predictor
    from allcls.machine import inference_workers, keep_freed_memory
    from allcls.models.backbones import BackboneSpec, create_backbone, input_spec

    if allocator:
        keep_freed_memory()
    spec = BackboneSpec("mobilenetv2_100")
    member = Member("mobilenetv2", 1.0, spec.name, Preprocessing(input_spec(spec), roi_crop=False))
    predictor = Predictor([member], [create_backbone(spec, num_classes=4)], ["a", "b", "c", "d"], batch_size=batch_size,
                          num_workers=inference_workers(None, torch.device("cpu")))
    predictor.predict(paths[:batch_size], ["identity"], desc="warm-up")
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    predictor.predict(paths, ["identity", "hflip"], desc="measured")
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {"images_per_s": 2 * len(paths) / seconds, "user_s": after.ru_utime - before.ru_utime,
            "system_s": after.ru_stime - before.ru_stime, "minor_faults": after.ru_minflt - before.ru_minflt}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--variant", type=int, help=argparse.SUPPRESS)  # one variant, in a child process
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant is not None:
        _, batch_size, allocator = VARIANTS[args.variant]
        paths = sorted(str(p) for p in Path(args.folder).glob("*.jpg"))
        print(json.dumps(measure(paths, batch_size, allocator)))
        return
    with tempfile.TemporaryDirectory(prefix="allcls-cpu-inference-") as folder:
        write_images(Path(folder), args.images)
        env = {"TQDM_DISABLE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
        print(f"{args.images} images x 2 views, MobileNetV2 at 224 px, {platform.processor() or platform.machine()}")
        print("| variant | images/s | user s | system s | minor page faults |\n|---|---|---|---|---|")
        for index, (label, _, _) in enumerate(VARIANTS):
            result = subprocess.run([sys.executable, __file__, "--variant", str(index), "--folder", folder],
                                    capture_output=True, text=True, check=True, env={**os.environ, **env})
            row = json.loads(result.stdout.strip().splitlines()[-1])
            print(f"| {label} | {row['images_per_s']:.1f} | {row['user_s']:.1f} | {row['system_s']:.1f} "
                  f"| {row['minor_faults']:,} |", flush=True)


if __name__ == "__main__":
    main()
