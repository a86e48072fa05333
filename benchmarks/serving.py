"""Serving speed: the diagnosis page's latency for one image, and batch prediction's throughput
against a plain loop that loads the checkpoint and predicts image by image with PIL.

Trains three small MobileNetV2 runs (one epoch on synthetic cells drawn at C-NMC's 450 x 450 px),
combines them into an equal-weight ensemble, and packages one run and the ensemble as the page
and `predict` use them. Then, side by side in one run:
  - the page: decoding one uploaded 450 px BMP and analysing it (allcls.serving.page.analysis: calibrated
    probabilities, prediction set, votes), for the single model and the 3-member ensemble, with
    and without Grad-CAM; median and 90th percentile over repeats, after a warm-up;
  - `allcls-predict` over a folder of C-NMC-sized BMPs, and the plain loop, each in its
    own process, each timed from loading the model to the CSV written.

    python benchmarks/serving.py [--images 500] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
os.environ.setdefault("TQDM_DISABLE", "1")

SIZE = 450  # C-NMC's cells: 450 x 450 px, 24-bit BMP
DATA = ["dataset=synthetic", f"dataset.reader.image_size={SIZE}", "dataset.reader.subjects_per_class=12",
        "dataset.reader.cells_per_subject=4", "dataset.reader.test_subjects_per_class=2"]
TRAIN = ["backbone=mobilenetv2", "trainer.max_epochs=1", "data.num_workers=0", "trainer.enable_progress_bar=false",
         "trainer.enable_model_summary=false", "seed=0,1,2"]
ONLY_EQUAL = [f"schemes.{s}=null" for s in ("proportional", "majority_vote", "best_single", "top_k", "simplex_grid",
                                            "greedy", "log_loss")]


def run(*command: str, cwd: Path) -> str:
    """`python <command>`, or the console script `command[0]` (allcls-package) of this environment."""
    program = [str(Path(sys.executable).parent / command[0])] if command[0].startswith("allcls-") else [sys.executable,
                                                                                                     command[0]]
    result = subprocess.run([*program, *command[1:]], cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def prepare(work: Path) -> dict:
    """Three trained runs, their ensemble, and both packaged; the store's URI and the model URIs."""
    from mlflow.tracking import MlflowClient

    run(str(PROJECT / "train.py"), "-m", *DATA, *TRAIN, cwd=work)
    run(str(PROJECT / "ensemble.py"), "experiment_name=synthetic-cnmc", "sweep_id=latest", "bootstrap=10", "cv_folds=2",
        *ONLY_EQUAL, cwd=work)
    store = f"sqlite:///{work}/mlruns/mlflow.db"
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("synthetic-cnmc").experiment_id
    single = client.search_runs([experiment], "tags.stage = 'train'", order_by=["attributes.start_time ASC"])[0]
    for run_id in (single.info.run_id, "latest"):
        run("allcls-package", f"run_id={run_id}", "experiment_name=synthetic-cnmc", "bootstrap=10", "coverage=0.8",
            cwd=work)
    ensemble = client.search_runs([experiment], "tags.stage = 'ensemble'")[0]
    checkpoint = client.download_artifacts(single.info.run_id, "checkpoints/best.ckpt", str(work / "plain"))
    return {"store": store, "single": f"runs:/{single.info.run_id}/model",
            "ensemble": f"runs:/{ensemble.info.run_id}/model", "checkpoint": checkpoint}


def cell_folder(work: Path, count: int) -> Path:
    """`count` C-NMC-sized BMPs: the synthetic cells, copied round until there are enough."""
    cells = sorted(work.glob("data/synthetic/cnmc-*/**/*.bmp"))
    folder = work / "cells"
    folder.mkdir()
    for index in range(count):
        shutil.copyfile(cells[index % len(cells)], folder / f"{index:04d}.bmp")
    return folder


def page_latency(models: dict, image: Path, repeats: int) -> list[tuple[str, float, float]]:
    """(variant, median ms, 90th percentile ms) of what the page does for one upload."""
    from allcls.serving.page.analysis import Upload, analyse, explanations
    from allcls.tracking import registry
    from allcls.tracking.tracker import Tracker

    tracker = Tracker(models["store"])
    upload = [Upload(image.name, image.read_bytes())]
    rows = []

    def answer(model, gradcam: bool) -> None:
        batch = analyse(model, upload, tta=False)
        if gradcam:
            explanations(model, batch, [0])

    for name, label in (("single", "MobileNetV2"), ("ensemble", "3-member MobileNetV2 ensemble")):
        model = registry.load(tracker, models[name]).model
        for gradcam in (False, True):
            for _ in range(2):  # warm-up
                answer(model, gradcam)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                answer(model, gradcam)
                times.append(1000 * (time.perf_counter() - start))
            rows.append((f"{label}, {'with' if gradcam else 'without'} Grad-CAM", statistics.median(times),
                         statistics.quantiles(times, n=10)[-1]))
    return rows


def allcls_predict(model: str, folder: Path, output: Path) -> tuple[float, float]:
    """(seconds to the model loaded, seconds predicting) of `allcls-predict`, imports done."""
    from allcls.serving import cli, predict
    from allcls.tracking import registry

    loaded_at = []
    load = registry.load

    def load_and_note(*args, **kwargs):
        loaded = load(*args, **kwargs)
        loaded_at.append(time.perf_counter())
        return loaded

    predict.registry.load = load_and_note  # type: ignore[attr-defined]
    sys.argv = ["allcls-predict", f"model={model}", f"input={folder}", f"output={output}"]
    start = time.perf_counter()
    try:
        cli.predict()
    except SystemExit as end:
        if end.code:
            raise
    finally:
        predict.registry.load = load  # type: ignore[attr-defined]
    return loaded_at[0] - start, time.perf_counter() - loaded_at[0]


def plain_loop(checkpoint: str, folder: Path, output: Path) -> tuple[float, float]:
    """(seconds loading, seconds predicting) of the plain loop: the checkpoint into a timm model,
    then each image with PIL."""
    import csv

    import timm
    import torch
    from PIL import Image
    from torchvision import transforms

    start = time.perf_counter()
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    classes = list(saved["hyper_parameters"]["class_names"])
    model = timm.create_model("mobilenetv2_100", num_classes=len(classes))
    model.load_state_dict({k.removeprefix("model."): v for k, v in saved["state_dict"].items()
                           if k.startswith("model.")})
    model.eval()
    config = timm.data.resolve_data_config({}, model=model)
    preprocess = transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor(),
                                     transforms.Normalize(config["mean"], config["std"])])
    loaded = time.perf_counter()
    with open(output, "w", newline="") as handle, torch.no_grad():
        writer = csv.writer(handle)
        writer.writerow(["path", "label", *[f"prob_{c}" for c in classes]])
        for path in sorted(folder.glob("*.bmp")):
            image = preprocess(Image.open(path).convert("RGB")).unsqueeze(0)
            probabilities = model(image).softmax(dim=1)[0].tolist()
            writer.writerow([str(path), classes[max(range(len(classes)), key=probabilities.__getitem__)],
                             *probabilities])
    return loaded - start, time.perf_counter() - loaded


def child(kind: str, source: str, folder: Path, output: Path) -> None:
    """One side of the throughput comparison, in this (fresh) process; prints its seconds as JSON."""
    side = allcls_predict if kind == "predict" else plain_loop
    loading, predicting = side(source, folder, output)
    print(json.dumps({"loading": loading, "predicting": predicting}))


def throughput(kind: str, source: str, folder: Path, output: Path, work: Path) -> tuple[float, float, float]:
    """(seconds loading the model, seconds predicting, seconds of the whole command with Python's
    start and imports) for one side."""
    start = time.perf_counter()
    printed = run(__file__, "--child", kind, "--source", source, "--folder", str(folder), "--output", str(output),
                  cwd=work)
    seconds = json.loads(printed.strip().splitlines()[-1])
    return seconds["loading"], seconds["predicting"], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=20)
    for hidden in ("--child", "--source", "--folder", "--output"):  # one side of the comparison
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.source, Path(args.folder), Path(args.output))
        return
    import torch

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU only'}", flush=True)
    with tempfile.TemporaryDirectory(prefix="allcls-serving-") as name:
        work = Path(name)
        started = time.perf_counter()
        models = prepare(work)
        print(f"(three MobileNetV2 runs trained, ensembled and packaged in {time.perf_counter() - started:.0f} s)",
              flush=True)
        folder = cell_folder(work, args.images)
        print(f"\nThe page, one uploaded {SIZE} px BMP ({args.repeats} repeats after a warm-up):")
        print("| model | median ms | 90th percentile ms |\n|---|---|---|")
        for label, median, p90 in page_latency(models, next(folder.iterdir()), args.repeats):
            print(f"| {label} | {median:.0f} | {p90:.0f} |", flush=True)
        print(f"\nBatch prediction, {args.images} BMPs of {SIZE} x {SIZE} px, MobileNetV2 (one checkpoint):")
        print("| command | model load, s | images/s, first image to CSV | whole command, s |\n|---|---|---|---|")
        sides = [("plain loop: checkpoint, then PIL image by image", "plain", models["checkpoint"]),
                 ("allcls-predict", "predict", models["single"])]
        rates, ends = [], []
        for label, kind, source in sides:
            loading, predicting, whole = throughput(kind, source, folder, work / f"{kind}.csv", work)
            rates.append(args.images / predicting)
            ends.append(args.images / (loading + predicting))
            print(f"| {label} | {loading:.1f} | {rates[-1]:.1f} | {whole:.1f} |", flush=True)
        print(f"\nallcls-predict / plain loop, images/s while predicting: {rates[1] / rates[0]:.2f}x; "
              f"from the model's load to the CSV: {ends[1] / ends[0]:.2f}x")

if __name__ == "__main__":
    main()
