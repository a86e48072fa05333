"""Serving speed: the diagnosis page's latency for one image, batch prediction's throughput against
a plain loop that loads the checkpoint and predicts image by image with PIL, and a served model's
latency: torch against ONNX Runtime (fp32, and int8 graphs) throughout.

Trains three small MobileNetV2 runs (one epoch on synthetic cells drawn at C-NMC's 450 x 450 px),
combines them into an equal-weight ensemble, and packages one run and the ensemble as the page
and `predict` use them. Then, side by side in one run:
  - the page: decoding one uploaded 450 px BMP and analysing it (allcls.serving.page.analysis: calibrated
    probabilities, prediction set, votes), for the single model and the 3-member ensemble, answered
    by ONNX Runtime and by torch, with and without Grad-CAM (torch's networks either way); median,
    spread and 90th percentile over --repeats, after a warm-up;
  - `allcls-predict` over a folder of C-NMC-sized BMPs with runtime=torch, with runtime=onnx and on
    the same run packaged with quantize=int8 (in a copy of the store), and the plain loop (the
    checkpoint into a timm model, then PIL and torchvision transforms image by image), each in its own
    process, each timed from loading the model to the CSV written; the four take turns for --rounds
    rounds, each figure the median of the rounds with the spread, the ratios to the plain loop taken
    round by round; with what int8 cost (packaging's test metrics, label agreement);
  - the single model behind `mlflow models serve` answering with each runtime: one client's p50 and
    p95 latency and requests a second, for 1 image and for 32 images a request (--repeats requests).

    python benchmarks/serving.py [--images 500] [--repeats 20] [--rounds 3] [--members 3] [--image-size 450]
    python benchmarks/serving.py --tiny     # what `make test` runs: 64 px cells, 32 px input, 2 members
"""

from __future__ import annotations

import argparse
import json
import os
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

from batch_sides import allcls_predict, plain_loop  # noqa: E402  (this folder's: each side's own process)
from commands import entry  # noqa: E402  (this folder's: the commands run in this process)
from results import median_spread, record  # noqa: E402  (this folder's results file)
from served_model import served_speed  # noqa: E402  (this folder's: mlflow models serve, timed)

TRAIN = ["backbone=mobilenetv2", "trainer.max_epochs=1", "data.num_workers=0", "trainer.enable_progress_bar=false",
         "trainer.enable_model_summary=false"]
ONLY_EQUAL = [f"schemes.{s}=null" for s in ("proportional", "majority_vote", "best_single", "top_k", "simplex_grid",
                                            "greedy", "log_loss")]


def run(*command: str, cwd: Path) -> str:
    """`python <command>` of this environment, run from `cwd`; its output."""
    result = subprocess.run([sys.executable, *command], cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def data_overrides(args) -> list[str]:
    """Synthetic cells at --image-size (C-NMC's: 450 x 450 px, 24-bit BMP)."""
    return ["dataset=synthetic", f"dataset.reader.image_size={args.image_size}",
            f"dataset.reader.subjects_per_class={args.subjects_per_class}",
            f"dataset.reader.cells_per_subject={args.cells_per_subject}",
            f"dataset.reader.test_subjects_per_class={args.test_subjects_per_class}"]


def prepare(work: Path, args) -> dict:
    """`args.members` trained runs, their ensemble, and the first run and the ensemble packaged, in a
    process of its own (`--prepare`: the commands a user types, one after the other); the store's
    URI and the model URIs."""
    settings = [f"--{key.replace('_', '-')}={getattr(args, key)}" for key in (
        "members", "image_size", "subjects_per_class", "cells_per_subject", "test_subjects_per_class")]
    size = [] if args.input_size is None else [f"--input-size={args.input_size}"]
    return json.loads(run(__file__, "--prepare", *settings, *size, cwd=work).strip().splitlines()[-1])


def prepared(work: Path, args) -> dict:
    """What `prepare` asks for, done in this process (run from `work`)."""
    from mlflow.tracking import MlflowClient

    size = [] if args.input_size is None else [f"backbone.input_size={args.input_size}"]
    seeds = ",".join(str(seed) for seed in range(args.members))
    entry("allcls-train", "-m", *data_overrides(args), *TRAIN, *size, f"seed={seeds}")
    entry("allcls-ensemble", "experiment_name=synthetic-cnmc", "sweep_id=latest", "bootstrap=10", "cv_folds=2",
          *ONLY_EQUAL)
    store = f"sqlite:///{work}/mlruns/mlflow.db"
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("synthetic-cnmc").experiment_id
    single = client.search_runs([experiment], "tags.stage = 'train'", order_by=["attributes.start_time ASC"])[0]
    for run_id in (single.info.run_id, "latest"):
        entry("allcls-package", f"run_id={run_id}", "experiment_name=synthetic-cnmc", "bootstrap=10", "coverage=0.8")
    ensemble = client.search_runs([experiment], "tags.stage = 'ensemble'")[0]
    checkpoint = client.download_artifacts(single.info.run_id, "checkpoints/best.ckpt", str(work / "plain"))
    # The same run packaged with int8 graphs, in a copy of the store (a run holds one packaged model).
    # quantize_max_drop=1: measured and reported here, never refused.
    shutil.copytree(work / "mlruns", work / "int8" / "mlruns")
    entry("allcls-package", f"run_id={single.info.run_id}", "experiment_name=synthetic-cnmc", "bootstrap=200",
          "coverage=0.8", "overwrite=true", "quantize=int8", "quantize_max_drop=0.999", cwd=work / "int8")
    int8_model = Path(MlflowClient(f"sqlite:///{work}/int8/mlruns/mlflow.db").download_artifacts(
        single.info.run_id, "model", str(work / "int8" / "model")))
    export = json.loads(next(int8_model.rglob("allcls_model.json")).read_text())["export"]
    return {"store": store, "single": f"runs:/{single.info.run_id}/model",
            "ensemble": f"runs:/{ensemble.info.run_id}/model", "checkpoint": checkpoint, "int8": export}


def cell_folder(work: Path, count: int) -> Path:
    """`count` C-NMC-sized BMPs: the synthetic cells, copied round until there are enough."""
    cells = sorted(work.glob("data/synthetic/cnmc-*/**/*.bmp"))
    folder = work / "cells"
    folder.mkdir()
    for index in range(count):
        shutil.copyfile(cells[index % len(cells)], folder / f"{index:04d}.bmp")
    return folder


def page_latency(models: dict, image: Path, repeats: int, members: int) -> dict[str, dict]:
    """Each variant's milliseconds for what the page does for one upload: median and spread of
    the repeats, their 90th percentile, and every repeat."""
    from allcls.serving.page.analysis import Upload, analyse, explanations
    from allcls.tracking import registry
    from allcls.tracking.tracker import Tracker

    tracker = Tracker(models["store"])
    upload = [Upload(image.name, image.read_bytes())]
    found = {}

    def answer(model, gradcam: bool) -> None:
        batch = analyse(model, upload, tta=False)
        if gradcam:
            explanations(model, batch, [0])

    for name, label in (("single", "MobileNetV2"), ("ensemble", f"{members}-member MobileNetV2 ensemble")):
        for runtime in ("onnx", "torch"):  # Grad-CAM: the torch networks' either way
            model = registry.load(tracker, models[name], runtime=runtime, explain=True).model
            for gradcam in (False, True):
                for _ in range(2):  # warm-up
                    answer(model, gradcam)
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    answer(model, gradcam)
                    times.append(1000 * (time.perf_counter() - start))
                found[f"{label}, {runtime}, {'with' if gradcam else 'without'} Grad-CAM"] = {
                    "ms": median_spread(times), "p90_ms": statistics.quantiles(times, n=10)[-1], "repeats_ms": times}
    return found


def child(kind: str, source: str, folder: Path, output: Path) -> None:
    """One side of the throughput comparison, in this (fresh) process; prints its seconds as JSON."""
    if kind.startswith("predict-"):  # predict-torch, predict-onnx, predict-int8 (ONNX Runtime on the int8 graphs)
        loading, predicting = allcls_predict(source, folder, output, "torch" if kind == "predict-torch" else "onnx")
    else:
        loading, predicting = plain_loop(source, folder, output)
    print(json.dumps({"loading": loading, "predicting": predicting}))


def throughput(kind: str, source: str, folder: Path, output: Path, work: Path) -> tuple[float, float, float]:
    """(seconds loading the model, seconds predicting, seconds of the whole command with Python's
    start and imports) for one side."""
    start = time.perf_counter()
    printed = run(__file__, "--child", kind, "--source", source, "--folder", str(folder), "--output", str(output),
                  cwd=work / "int8" if kind == "predict-int8" else work)  # its store: the copy with int8 graphs
    seconds = json.loads(printed.strip().splitlines()[-1])
    return seconds["loading"], seconds["predicting"], time.perf_counter() - start


def int8_figures(export: dict, fp32_csv: Path, int8_csv: Path) -> dict:
    """What int8 cost: packaging's test metrics before and after (with intervals) and its label
    agreement with torch on validation, and the share of the benchmark's images whose label the
    int8 graphs give as the fp32 graphs do (the last round's two CSVs)."""
    import pandas as pd

    fp32, int8 = pd.read_csv(fp32_csv), pd.read_csv(int8_csv)
    return {"on_test": export["int8_on_test"], "validation_label_agreement": export["int8_label_agreement"],
            "images_label_agreement": float((fp32["label"] == int8["label"]).mean()), "images": len(fp32)}


def interval(figures: list[float]) -> str:
    value, low, high = figures
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def spread(values: dict, digits: int = 1) -> str:
    return f"{values['median']:.{digits}f} ({values['min']:.{digits}f}-{values['max']:.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500, help="the BMPs batch prediction reads")
    parser.add_argument("--repeats", type=int, default=20, help="the page's answers timed per variant")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the batch prediction comparison")
    parser.add_argument("--members", type=int, default=3, help="MobileNetV2 runs trained (seeds 0..), the ensemble's")
    parser.add_argument("--image-size", type=int, default=450, help="the synthetic cells' side (C-NMC's: 450)")
    parser.add_argument("--input-size", type=int, default=None, help="the network's input side (default: 224)")
    parser.add_argument("--subjects-per-class", type=int, default=12)
    parser.add_argument("--cells-per-subject", type=int, default=4)
    parser.add_argument("--test-subjects-per-class", type=int, default=2)
    parser.add_argument("--tiny", action="store_true",
                        help="2 members at 32 px input on 64 px cells (3+1 subjects per class of 2 cells), "
                             "8 images, 3 repeats, one round, one server (ONNX Runtime)")
    for hidden in ("--child", "--source", "--folder", "--output"):  # one side of the comparison
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)  # the models, in a child process
    args = parser.parse_args()
    if args.prepare:
        print(json.dumps(prepared(Path.cwd(), args)))
        return
    if args.child:
        child(args.child, args.source, Path(args.folder), Path(args.output))
        return
    if args.tiny:
        args.images, args.repeats, args.rounds, args.members, args.image_size, args.input_size = 8, 3, 1, 2, 64, 32
        args.subjects_per_class, args.cells_per_subject, args.test_subjects_per_class = 3, 2, 1
    import torch

    with tempfile.TemporaryDirectory(prefix="allcls-serving-") as name:
        work = Path(name)
        started = time.perf_counter()
        models = prepare(work, args)
        preparing = time.perf_counter() - started
        print(f"({args.members} MobileNetV2 runs trained, ensembled and packaged in {preparing:.0f} s)", flush=True)
        folder = cell_folder(work, args.images)
        page = page_latency(models, next(folder.iterdir()), args.repeats, args.members)
        runtimes = ("onnx",) if args.tiny else ("onnx", "torch")  # --tiny: one server start, not two
        served = {runtime: served_speed(models["store"], models["single"], runtime, sorted(folder.iterdir()),
                                        args.repeats, work) for runtime in runtimes}
        sides = {"plain": ("plain loop: checkpoint, then PIL image by image", models["checkpoint"]),
                 "predict-torch": ("`allcls-predict runtime=torch`", models["single"]),
                 "predict-onnx": ("`allcls-predict runtime=onnx` (ONNX Runtime)", models["single"]),
                 "predict-int8": ("`allcls-predict`, packaged with `quantize=int8`", models["single"])}
        rounds: dict[str, list[dict]] = {kind: [] for kind in sides}
        for repeat in range(args.rounds):
            for kind, (_, source) in sides.items():
                loading, predicting, whole = throughput(kind, source, folder, work / f"{kind}-{repeat + 1}.csv", work)
                rounds[kind].append({"loading_s": loading, "predicting_s": predicting, "whole_s": whole,
                                     "images_per_s": args.images / predicting,
                                     "images_per_s_from_load": args.images / (loading + predicting)})
                print(f"round {repeat + 1}, {kind}: {rounds[kind][-1]}", flush=True)
        int8 = int8_figures(models["int8"], work / f"predict-onnx-{args.rounds}.csv",
                            work / f"predict-int8-{args.rounds}.csv")
    batch = {kind: {key: median_spread([r[key] for r in runs]) for key in runs[0]} for kind, runs in rounds.items()}
    ratio = {f"{kind} / plain": {key: median_spread([p[key] / q[key] for p, q in zip(rounds[kind], rounds["plain"],
                                                                                     strict=True)])
                                 for key in ("images_per_s", "images_per_s_from_load")}
             for kind in ("predict-torch", "predict-onnx", "predict-int8")}
    size = args.input_size or 224
    page_table = [["model", "median ms (min-max)", "90th percentile ms"],
                  *[[label, spread(f["ms"], 0), f"{f['p90_ms']:.0f}"] for label, f in page.items()]]
    batch_table = [["command", "model load, s", "images/s, first image to CSV", "whole command, s"],
                   *[[label, spread(batch[kind]["loading_s"]), spread(batch[kind]["images_per_s"]),
                      spread(batch[kind]["whole_s"])] for kind, (label, _) in sides.items()]]
    ratio_table = [["against the plain loop, round by round", "images/s while predicting",
                    "from the model's load to the CSV"],
                   *[[f"{sides[kind][0]}", spread(ratio[f'{kind} / plain']["images_per_s"], 2) + "x",
                      spread(ratio[f'{kind} / plain']["images_per_s_from_load"], 2) + "x"]
                     for kind in ("predict-torch", "predict-onnx", "predict-int8")]]
    setting = {"images": args.images, "image_size": args.image_size, "input_size": size, "repeats": args.repeats,
               "rounds": args.rounds, "members": args.members, "subjects_per_class": args.subjects_per_class,
               "cells_per_subject": args.cells_per_subject, "test_subjects_per_class": args.test_subjects_per_class,
               "torch": torch.__version__}
    int8_table = [["int8 against fp32", "fp32", "int8"],
                  *[[f"test {metric} (packaging's measure)", interval(f["fp32"]), interval(f["int8"])]
                    for metric, f in int8["on_test"].items()],
                  ["labels as torch's, validation cells", "", f"{int8['validation_label_agreement']:.1%}"],
                  [f"labels as the fp32 graphs', the {int8['images']} images above", "",
                   f"{int8['images_label_agreement']:.1%}"]]
    served_table = [["`mlflow models serve`, one client", "p50 ms", "p95 ms", "requests/s", "images/s"],
                    *[[f"{runtime}, {label} a request", f"{f['p50_ms']:.0f}", f"{f['p95_ms']:.0f}",
                       f"{f['requests_per_s']:.1f}", f"{f['images_per_s']:.0f}"]
                      for runtime, by_size in served.items() for label, f in by_size.items()]]
    tables = {"main": page_table, "batch": batch_table, "batch_ratio": ratio_table, "int8": int8_table,
              "served": served_table}
    record("serving", {"page": page, "batch": batch, "batch_ratio": ratio, "rounds": rounds, "int8": int8,
                       "served": served, "preparing_s": preparing}, setting, tables)
    for table in tables.values():
        print("\n".join(" | ".join(row) for row in table) + "\n")


if __name__ == "__main__":
    main()
