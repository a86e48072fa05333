"""Orchestration overhead: training steps per second of allcls's fit (the Lightning Trainer with
allcls's callbacks and model, torchmetrics per step, the progress bar, the metrics going to a
SQLite MLflow run through the Tracker, best.ckpt and last.ckpt every epoch) against a plain PyTorch
loop on the same model, data loaders and batch size (with what a plain script does too: a
validation pass and the best weights saved every epoch). Both loops feed the network the same
input: the loaders carry uint8 images (the batch pipeline), which the plain loop turns into the
network's input with the datamodule's `model_input`, the step allcls's LightningDataModule runs on
every batch after it reaches the device (`on_after_batch_transfer`). Runs alternate, --repeats
pairs for each epoch length (--cells: synthetic cells per subject); each figure is the median of
the runs with the spread, and allcls / plain is taken pair by pair.

    python benchmarks/orchestration.py [--backbone mobilenetv2] [--size 64] [--epochs 3] [--repeats 3]
        [--cells 120 40]
    python benchmarks/orchestration.py --tiny     # seconds: what `make test` runs
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from allcls.config.entry import CONF_DIR, prepare_process  # noqa: E402

prepare_process()  # as the entry points do: environment defaults and conf/'s resolvers

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import open_dict  # noqa: E402
from plain_finetune import evaluate  # noqa: E402  (this folder's plain script)
from results import median_spread, record  # noqa: E402  (this folder's results file)

from allcls.config.stage import Job  # noqa: E402
from allcls.tracking import schema as run_schema  # noqa: E402
from allcls.tracking.tracker import Tracker  # noqa: E402
from allcls.training.build import build_datamodule, build_model, check_config, prepare  # noqa: E402
from allcls.training.fit import RunMetricsLogger, fit  # noqa: E402


def config(folder: Path, overrides: list[str], run: int):
    """conf/train.yaml as `python train.py <overrides>` composes it, launched from `folder`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.cwd = str(folder)
        cfg.hydra.runtime.output_dir = str(folder / f"job-{run}")
        cfg.hydra.job.name = "train"
    HydraConfig.instance().set_config(cfg)
    return cfg


def allcls_fit(cfg) -> tuple[float, int]:
    """Seconds of allcls's fit (what train.py runs between preparing the data and evaluating), and its steps."""
    backbone = check_config(cfg)
    datamodule = build_datamodule(cfg, prepare(cfg), backbone)
    model = build_model(cfg, datamodule, backbone)
    tracker = Tracker(cfg.logger.tracking_uri, cfg.logger.artifact_location)
    experiment = tracker.experiment(cfg.experiment_name, create=True)
    with tracker.stage_run(experiment, run_schema.TRAIN, "benchmark", {}, Job.of(cfg)) as run:
        start = time.perf_counter()
        trainer = fit(cfg, model, datamodule, RunMetricsLogger(run))
        return time.perf_counter() - start, trainer.global_step


def plain_fit(cfg, folder: Path) -> tuple[float, int]:
    """Seconds of a plain loop over the same loaders, model, optimiser and schedule, and its steps.
    Its batches become the network's input as allcls's do (the loaders carry uint8 images:
    `model_input` augments and normalises them), so both loops do the same work per batch."""
    backbone = check_config(cfg)
    datamodule = build_datamodule(cfg, prepare(cfg), backbone)
    datamodule.setup("fit")
    model = build_model(cfg, datamodule, backbone).model  # the same timm module and initial weights
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.model.optimizer.lr,
                                  weight_decay=cfg.model.optimizer.weight_decay)
    epochs = cfg.trainer.max_epochs
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    train_loader, val_loader = datamodule.train_dataloader(), datamodule.val_dataloader()
    best, steps = -1.0, 0
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for images, labels in train_loader:
            optimizer.zero_grad()
            criterion(model(datamodule.model_input(images, train=True)), labels).backward()
            optimizer.step()
            steps += 1
        scheduler.step()
        inputs = [(datamodule.model_input(images), labels) for images, labels in val_loader]
        _, score = evaluate(model, inputs)  # plain_finetune's: balanced accuracy, weighted F1
        if score > best:
            best = score
            torch.save(model.state_dict(), folder / "plain-best.pt")
    return time.perf_counter() - start, steps


def spread(timing: dict, digits: int) -> str:
    return f"{timing['median']:.{digits}f} ({timing['min']:.{digits}f}-{timing['max']:.{digits}f})"


def measure(folder: Path, overrides: list[str], repeats: int, first_job: int) -> dict:
    """Steps per second of the plain loop and of allcls's fit, `repeats` alternating pairs, and
    allcls / plain pair by pair."""
    plain, allcls, steps = [], [], 0
    for run in range(repeats):
        job = first_job + 2 * run
        seconds, steps = plain_fit(config(folder, overrides, job), folder)
        plain.append(steps / seconds)
        seconds, allcls_steps = allcls_fit(config(folder, overrides, job + 1))
        allcls.append(allcls_steps / seconds)
        print(f"pair {run + 1}: plain {plain[-1]:.2f}, allcls {allcls[-1]:.2f} steps/s", flush=True)
    return {"steps": steps, "plain": median_spread(plain), "allcls": median_spread(allcls),
            "ratio": median_spread([a / p for a, p in zip(allcls, plain, strict=True)]),
            "runs": {"plain": plain, "allcls": allcls}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilenetv2")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cells", type=int, nargs="+", default=[120, 40],
                        help="synthetic cells per subject, one row each: 120 gives 75 steps per epoch at batch 32, "
                             "40 gives 25")
    parser.add_argument("--tiny", action="store_true", help="custom_cnn at 32 px, one epoch of 2 steps, one pair")
    args = parser.parse_args()
    if args.tiny:
        args.backbone, args.size, args.epochs, args.repeats, args.cells = "custom_cnn", 32, 1, 1, [4]
    torch.set_num_threads(os.cpu_count() or 1)
    common = [f"backbone={args.backbone}", "backbone.pretrained=false", f"backbone.input_size={args.size}",
              f"dataset.reader.image_size={args.size}", "data.num_workers=0", f"data.batch_size={args.batch_size}",
              f"trainer.max_epochs={args.epochs}", "callbacks.early_stopping=null"]
    by_cells = {}
    with tempfile.TemporaryDirectory(prefix="allcls-orchestration-") as tmp:
        folder = Path(tmp)
        for index, cells in enumerate(args.cells):
            overrides = [*common, f"dataset.reader.cells_per_subject={cells}"]
            by_cells[cells] = measure(folder, overrides, args.repeats, 2 * args.repeats * index)
    header = ["epochs of", "plain loop, steps/s", "allcls, steps/s", "allcls / plain"]
    rows = [[f"{found['steps'] // args.epochs} steps ({cells} cells per subject)", spread(found["plain"], 2),
             spread(found["allcls"], 2), spread(found["ratio"], 3)] for cells, found in by_cells.items()]
    setting = {"backbone": args.backbone, "pretrained": False, "size": args.size, "epochs": args.epochs,
               "batch_size": args.batch_size, "repeats": args.repeats, "cells_per_subject": args.cells,
               "torch": torch.__version__, "threads": torch.get_num_threads()}
    record("orchestration", {"by_cells_per_subject": {str(c): f for c, f in by_cells.items()}}, setting,
           {"main": [header, *rows]})
    print("\n".join(" | ".join(row) for row in [header, *rows]))


if __name__ == "__main__":
    main()
