"""Ensemble search speed: the full default scheme set of conf/ensemble.yaml over 5 and over 30
models x 2,000 validation samples (binary, like C-NMC; 30 is a study's sweep of backbones x seeds),
and, for 5 models, against a naive loop that scores each weighting of the same 0.05 simplex grid
with scikit-learn.

    python benchmarks/ensemble_search.py [--models 5 30] [--samples 2000]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from sklearn.metrics import f1_score  # noqa: E402

from allcls.config.entry import CONF_DIR  # noqa: E402
from allcls.ensemble.candidates import Candidates, SplitPredictions  # noqa: E402
from allcls.ensemble.schemes import build_schemes, simplex_grid_points  # noqa: E402
from allcls.ensemble.selection import evaluate_schemes  # noqa: E402
from allcls.tracking.tracker import Experiment  # noqa: E402

CONFIG = CONF_DIR / "ensemble.yaml"


def members(models: int, samples: int, seed: int = 0) -> Candidates:
    rng = np.random.default_rng(seed)

    def split(n):
        labels = rng.integers(0, 2, n)
        logits = rng.normal(size=(models, n, 2)) + np.linspace(0.8, 1.6, models)[:, None, None] * np.eye(2)[labels]
        probs = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
        subjects = np.array([f"S{i // 20}" for i in range(n)], dtype=object)
        return SplitPredictions(np.array([f"{i}.bmp" for i in range(n)], dtype=object), subjects, labels, probs)

    names = [f"model{m}" for m in range(models)]
    return Candidates([f"run{m}" for m in range(models)], names, {"classes": "hem,all"}, split(samples), split(samples),
                      Experiment("0", "benchmark"))


def timed(function, *args, repeats: int = 3):
    """The result and the median wall time of `repeats` calls."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(*args)
        seconds.append(time.perf_counter() - start)
    return result, float(np.median(seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, nargs="+", default=[5, 30])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--naive-limit", type=int, default=1000,
                        help="weightings timed in the naive loop (then scaled)")
    args = parser.parse_args()
    config = OmegaConf.load(CONFIG)
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}; median of 3 runs")
    for models in args.models:
        measure(models, args.samples, config, args.naive_limit)


def measure(models: int, samples: int, config, naive_limit: int) -> None:
    data = members(models, samples)
    schemes = build_schemes(OmegaConf.to_container(config.schemes), config.metric, config.combine, config.seed,
                            models)
    val = data.val
    print(f"\n{models} models x {samples} validation samples, {len(schemes)} schemes\n")
    print("| step | seconds |\n|---|---|")
    total = 0.0
    for scheme in schemes:
        _, seconds = timed(scheme.fit, val.probs, val.labels)
        total += seconds
        if scheme.family in ("simplex_grid", "greedy", "log_loss"):
            print(f"| fit {scheme.name} | {seconds:.3f} |")
    print(f"| **fit the whole default scheme set** | **{total:.3f}** |")
    _, seconds = timed(evaluate_schemes, schemes, data, config.metric, config.cv_folds, config.bootstrap,
                       config.seed, config.report_top, False)
    step = (f"fit + {config.cv_folds}-fold CV + {config.bootstrap} bootstrap CIs + the choice + test report, "
            "every scheme")
    print(f"| {step} | {seconds:.3f} |")
    _, seconds = timed(evaluate_schemes, schemes, data, config.metric, config.cv_folds, config.bootstrap,
                       config.seed, config.report_top, True)
    print(f"| the same with the nested estimate of the choice ({config.cv_folds} outer folds) | {seconds:.3f} |")

    grid_scheme = next(s for s in schemes if s.family == "simplex_grid")
    if "(best" in grid_scheme.name:
        return  # the grid covers only some members: no like-for-like naive loop
    grid = simplex_grid_points(models, 0.05)
    sample = grid[:naive_limit]
    _, naive = timed(lambda: [f1_score(val.labels, np.tensordot(w, val.probs, 1).argmax(axis=1), average="weighted")
                              for w in sample], repeats=1)
    naive_grid = naive * len(grid) / len(sample)
    _, vectorised = timed(grid_scheme.fit, val.probs, val.labels)
    print(f"\nsimplex grid, {len(grid):,} weightings: vectorised {vectorised:.3f} s; naive loop with scikit-learn "
          f"{naive_grid:.1f} s (timed on {len(sample):,}, scaled); speed-up {naive_grid / vectorised:.0f}x")


if __name__ == "__main__":
    main()
