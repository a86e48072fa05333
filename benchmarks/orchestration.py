"""Orchestration overhead: training steps per second of allcls's fit (the Lightning Trainer with
allcls's callbacks and model, torchmetrics per step, the progress bar, the metrics going to a
SQLite MLflow run through the Tracker, best.ckpt and last.ckpt every epoch) against a plain PyTorch
loop on the same model, data loaders and batch size (with what a plain script does too: a
validation pass and the best weights saved every epoch). Runs alternate; the median is reported.

    python benchmarks/orchestration.py [--backbone mobilenetv2] [--size 64] [--epochs 3] [--repeats 3] [--cells 120]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from allcls.config.entry import CONF_DIR, prepare_process

prepare_process()  # as the entry points do: environment defaults and conf/'s resolvers

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import open_dict  # noqa: E402
from plain_finetune import evaluate  # noqa: E402  (this folder's plain script)

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilenetv2")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cells", type=int, default=120,
                        help="synthetic cells per subject: 120 gives 75 steps per epoch at batch 32")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    overrides = [f"backbone={args.backbone}", "backbone.pretrained=false", f"backbone.input_size={args.size}",
                 f"dataset.reader.image_size={args.size}", "data.num_workers=0",
                 f"data.batch_size={args.batch_size}", f"trainer.max_epochs={args.epochs}",
                 "callbacks.early_stopping=null", f"dataset.reader.cells_per_subject={args.cells}"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        timings: dict[str, list[float]] = {"plain PyTorch loop": [], "allcls (train.py's fit)": []}
        for run in range(args.repeats):
            seconds, steps = plain_fit(config(folder, overrides, 2 * run), folder)
            timings["plain PyTorch loop"].append(steps / seconds)
            seconds, steps = allcls_fit(config(folder, overrides, 2 * run + 1))
            timings["allcls (train.py's fit)"].append(steps / seconds)
    print(f"\n{args.backbone} at {args.size} px, batch {args.batch_size}, {args.epochs} epochs of "
          f"{steps // args.epochs} steps, {args.repeats} alternating runs; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    plain = statistics.median(timings["plain PyTorch loop"])
    print(f"{'':26}{'steps/s (median)':>18}{'runs':>30}{'vs plain':>10}")
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"{name:26}{median:18.2f}{', '.join(f'{v:.2f}' for v in values):>30}{median / plain:10.3f}")


if __name__ == "__main__":
    main()
