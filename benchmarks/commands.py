"""allcls's console scripts run in this process, as the benchmarks make the models they measure:
each command's `main` with the command line a user would type, from the folder they would type it
in, one after the other (what the commands run, without a Python process and its imports each).
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path

ENTRIES = {"allcls-train": "allcls.training.cli:main", "allcls-ensemble": "allcls.ensemble.cli:main",
           "allcls-package": "allcls.serving.cli:package", "allcls-evaluate": "allcls.evaluation.cli:main"}


def entry(program: str, *args: str, cwd: Path | None = None) -> float:
    """`program *args` (a console script of ENTRIES) run here from `cwd` (default: this folder);
    its seconds. A command that fails stops the benchmark with its exit code."""
    import mlflow
    from hydra.core.global_hydra import GlobalHydra

    module, name = ENTRIES[program].split(":")
    main = getattr(importlib.import_module(module), name)
    argv, here = sys.argv, Path.cwd()
    # a fresh command: no tracking URI that an earlier one set (each composes its store from its folder)
    mlflow.set_tracking_uri(None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    GlobalHydra.instance().clear()
    sys.argv = [program, *args]
    started = time.perf_counter()
    try:
        os.chdir(cwd or here)
        main()
    except SystemExit as end:
        if end.code:
            raise SystemExit(f"{program} {' '.join(args)} failed ({end.code})") from None
    finally:
        sys.argv = argv
        os.chdir(here)
        GlobalHydra.instance().clear()
    seconds = time.perf_counter() - started
    print(f"  {program} {' '.join(args[:2])} ... {seconds:.0f} s", file=sys.stderr, flush=True)
    return seconds


# --tiny's model: custom_cnn at 32 px, one epoch on a small synthetic C-NMC dataset, packaged and registered.
TINY_TRAIN = ["dataset=synthetic", "dataset.reader.image_size=32", "dataset.reader.subjects_per_class=3",
              "dataset.reader.cells_per_subject=4", "dataset.reader.test_subjects_per_class=1",
              "backbone=custom_cnn", "backbone.input_size=32", "trainer.max_epochs=1", "data.num_workers=0",
              "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def tiny_store(folder: Path) -> str:
    """A store in `folder` with one registered model (tiny-cells@champion), made by the commands a
    user types (run in this process: benchmarks/commands.py); its URI."""
    from mlflow import MlflowClient

    folder.mkdir(parents=True, exist_ok=True)
    store = f"sqlite:///{folder}/mlruns/mlflow.db"
    entry("allcls-train", *TINY_TRAIN, cwd=folder)
    client = MlflowClient(store)
    run = client.search_runs([client.get_experiment_by_name("synthetic-cnmc").experiment_id], "tags.stage = 'train'")[0]
    entry("allcls-package", f"run_id={run.info.run_id}", "experiment_name=synthetic-cnmc", "bootstrap=10",
          "coverage=0.8", "ood.probes=false", "register_as=tiny-cells", "alias=champion", cwd=folder)
    return store
