"""Ensemble search speed: the full default scheme set of conf/ensemble.yaml over 5 and over 30
models x 2,000 validation samples (binary, like C-NMC; 30 is a study's sweep of backbones x seeds),
and, for 5 models, the same simplex grid scored by a plain loop with scikit-learn, side by side.
Every timing is the median of --repeats runs, with the spread; the ratio is taken run by run.

    python benchmarks/ensemble_search.py [--models 5 30] [--samples 2000] [--repeats 3]
    python benchmarks/ensemble_search.py --tiny     # seconds: what `make test` runs
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from results import median_spread, record  # noqa: E402  (this folder's results file)
from sklearn.metrics import f1_score  # noqa: E402

from allcls.config.entry import CONF_DIR  # noqa: E402
from allcls.ensemble.candidates import Candidates, SplitPredictions  # noqa: E402
from allcls.ensemble.schemes import SimplexGrid, build_schemes, simplex_grid_points  # noqa: E402
from allcls.ensemble.selection import evaluate_schemes  # noqa: E402
from allcls.tracking.tracker import Experiment  # noqa: E402

CONFIG = CONF_DIR / "ensemble.yaml"
SEARCHING = ("simplex_grid", "greedy", "log_loss")  # the schemes whose fit is a search: timed one by one


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


def seconds(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def timed(function, *args, repeats: int) -> dict:
    return median_spread([seconds(function, *args) for _ in range(repeats)])


def measure(models: int, samples: int, config, repeats: int) -> dict:
    """Each searching scheme's fit, the whole set's, the comparison without and with the nested estimate."""
    data = members(models, samples)
    schemes = build_schemes(OmegaConf.to_container(config.schemes), config.metric, config.combine, config.seed,
                            models)
    val = data.val
    fits = {scheme.family: {"scheme": scheme.name, **timed(scheme.fit, val.probs, val.labels, repeats=repeats)}
            for scheme in schemes if scheme.family in SEARCHING}
    whole = [sum(seconds(s.fit, val.probs, val.labels) for s in schemes) for _ in range(repeats)]
    compare = (schemes, data, config.metric, config.cv_folds, config.bootstrap, config.seed, config.report_top)
    return {"schemes": len(schemes), "fit": fits, "fit_all": median_spread(whole),
            "compare": timed(evaluate_schemes, *compare, False, repeats=repeats),
            "compare_nested": timed(evaluate_schemes, *compare, True, repeats=repeats)}


def against_a_plain_loop(models: int, samples: int, step: float, repeats: int) -> dict:
    """The grid of `step` over `models` members scored by a plain loop calling scikit-learn's f1_score
    per weighting, and by the vectorised search, alternately; the ratio run by run."""
    val = members(models, samples).val
    grid = simplex_grid_points(models, step)
    search = SimplexGrid("f1_weighted", step, "arithmetic", len(grid))
    plain, vectorised = [], []
    for _ in range(repeats):
        plain.append(seconds(lambda: [f1_score(val.labels, np.tensordot(w, val.probs, 1).argmax(axis=1),
                                               average="weighted") for w in grid]))
        vectorised.append(seconds(search.fit, val.probs, val.labels))
    return {"weightings": len(grid), "plain": median_spread(plain), "vectorised": median_spread(vectorised),
            "ratio": median_spread([p / v for p, v in zip(plain, vectorised, strict=True)])}


def spread(timing: dict, digits: int = 3) -> str:
    return f"{timing['median']:.{digits}f} ({timing['min']:.{digits}f}-{timing['max']:.{digits}f})"


def tables(by_size: dict, loop: dict, config) -> dict:
    sizes = list(by_size)
    header = ["step (seconds: median (min-max))", *[f"{n} members" for n in sizes]]
    rows = [[f"fit {family} ({'; '.join(dict.fromkeys(by_size[n]['fit'][family]['scheme'] for n in sizes))})",
             *[spread(by_size[n]["fit"][family]) for n in sizes]] for family in SEARCHING]
    rows.append([f"fit the whole default scheme set ({by_size[sizes[0]]['schemes']} schemes)",
                 *[spread(by_size[n]["fit_all"]) for n in sizes]])
    rows.append([f"fit + {config.cv_folds}-fold CV + {config.bootstrap} bootstrap CIs + the choice + test report",
                 *[spread(by_size[n]["compare"]) for n in sizes]])
    rows.append(["the same with the nested estimate of the choice",
                 *[spread(by_size[n]["compare_nested"]) for n in sizes]])
    plain = [["grid", "weightings", "plain loop (s)", "vectorised (s)", "ratio"],
             [f"{loop['models']} members, step {loop['step']:g}", f"{loop['weightings']:,}", spread(loop["plain"], 2),
              spread(loop["vectorised"]), f"{loop['ratio']['median']:.0f}x ({loop['ratio']['min']:.0f}-"
                                          f"{loop['ratio']['max']:.0f}x)"]]
    return {"main": [header, *rows], "plain_loop": plain}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, nargs="+", default=[5, 30])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--step", type=float, default=0.05, help="the grid the plain loop scores (over 5 members)")
    parser.add_argument("--tiny", action="store_true", help="5 and 8 members x 200 samples, once; a coarse grid")
    args = parser.parse_args()
    if args.tiny:
        args.models, args.samples, args.repeats, args.step = [5, 8], 200, 1, 0.25
    config = OmegaConf.load(CONFIG)
    by_size = {n: measure(n, args.samples, config, args.repeats) for n in args.models}
    loop = {"models": 5, "step": args.step, **against_a_plain_loop(5, args.samples, args.step, args.repeats)}
    setting = {"models": args.models, "samples": args.samples, "repeats": args.repeats, "plain_loop_step": args.step}
    record("ensemble_search", {"by_members": {str(n): v for n, v in by_size.items()}, "plain_loop": loop}, setting,
           tables(by_size, loop, config))
    for table in tables(by_size, loop, config).values():
        print("\n".join(" | ".join(row) for row in table) + "\n")


if __name__ == "__main__":
    main()
