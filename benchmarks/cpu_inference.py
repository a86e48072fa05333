"""CPU inference: what evaluation's Predictor gets from glibc's allocator settings and the batch size.

Predicts 224 px images with MobileNetV2 (the identity view and a flipped one, as test-time
augmentation does) through allcls's Predictor, four ways side by side, each in its own process
(the allocator setting is process-wide): batch 64 with glibc's default malloc thresholds (what
evaluation did before), batch 16 alone, the raised thresholds alone, and both (evaluation now).
The four variants take turns, --repeats rounds; each figure is the median of the rounds with the
spread, and each variant's speed against the first's is taken round by round.

    python benchmarks/cpu_inference.py [--images 256] [--repeats 3]
    python benchmarks/cpu_inference.py --tiny     # seconds: what `make test` runs

Records images per second, user and system CPU seconds, and minor page faults per variant
(benchmarks/results.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from results import median_spread, record  # noqa: E402  (this folder's results file)

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


MEASURED = ("images_per_s", "user_s", "system_s", "minor_faults")


def spread(timing: dict, digits: int) -> str:
    return f"{timing['median']:,.{digits}f} ({timing['min']:,.{digits}f}-{timing['max']:,.{digits}f})"


def table(variants: dict) -> list[list[str]]:
    rows = [["variant", "images/s", "user s", "system s", "minor page faults"]]
    for label, found in variants.items():
        rows.append([label, spread(found["images_per_s"], 1), spread(found["user_s"], 1),
                     spread(found["system_s"], 1), spread(found["minor_faults"], 0)])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the four variants, taking turns")
    parser.add_argument("--tiny", action="store_true", help="4 images, one round")
    parser.add_argument("--variant", type=int, help=argparse.SUPPRESS)  # one variant, in a child process
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant is not None:
        _, batch_size, allocator = VARIANTS[args.variant]
        paths = sorted(str(p) for p in Path(args.folder).glob("*.jpg"))
        print(json.dumps(measure(paths, batch_size, allocator)))
        return
    if args.tiny:
        args.images, args.repeats = 4, 1
    runs: dict[str, list[dict]] = {label: [] for label, _, _ in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="allcls-cpu-inference-") as folder:
        write_images(Path(folder), args.images)
        env = {"TQDM_DISABLE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
        for repeat in range(args.repeats):
            for index, (label, _, _) in enumerate(VARIANTS):
                result = subprocess.run([sys.executable, __file__, "--variant", str(index), "--folder", folder],
                                        capture_output=True, text=True, check=True, env={**os.environ, **env})
                runs[label].append(json.loads(result.stdout.strip().splitlines()[-1]))
                print(f"round {repeat + 1}, {label}: {runs[label][-1]}", flush=True)
    before = runs[VARIANTS[0][0]]
    variants = {label: {**{key: median_spread([row[key] for row in rows]) for key in MEASURED},
                        "speed_vs_before": median_spread([row["images_per_s"] / first["images_per_s"]
                                                          for row, first in zip(rows, before, strict=True)])}
                for label, rows in runs.items()}
    import torch

    setting = {"images": args.images, "views": ["identity", "hflip"], "model": "mobilenetv2_100 at 224 px",
               "repeats": args.repeats, "torch": torch.__version__}
    tables = {"main": table(variants)}
    record("cpu_inference", {"variants": variants, "runs": runs}, setting, tables)
    print("\n".join(" | ".join(row) for row in tables["main"]))


if __name__ == "__main__":
    main()
