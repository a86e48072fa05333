"""Weighting schemes: each turns validation predictions into one weight per member.

A scheme is `fit(probs, labels) -> weights`, where probs is (models, samples, classes) and the
weights are non-negative and sum to 1. `Scheme.rule` says how the weighted members are combined
(arithmetic or geometric mean of probabilities, or a weighted vote). `build_schemes` expands the
`schemes` section of conf/ensemble.yaml into the list to compare: each entry is read into the
dataclass of its settings below (where its defaults live); an entry set to null is off.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
from scipy.optimize import minimize

from allcls.config import typed
from allcls.ensemble.combining import combine
from allcls.ensemble.weight_search import best_weighting
from allcls.errors import AllclsError
from allcls.metrics.names import regret
from allcls.metrics.vectorised import scores

Fit = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Scheme:
    name: str
    fit: Fit
    rule: str = "arithmetic"
    family: str = ""


def member_scores(probs: np.ndarray, labels: np.ndarray, metric: str) -> np.ndarray:
    """Each member's own validation score (models,)."""
    return scores(probs, labels, (metric,))[metric]


def normalised(weights: np.ndarray) -> np.ndarray:
    weights = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    total = weights.sum()
    return weights / total if total > 0 else np.full(len(weights), 1.0 / len(weights))


# --- the schemes ---------------------------------------------------------------------------------

def equal(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.full(probs.shape[0], 1.0 / probs.shape[0])


def proportional(metric: str, power: float = 1.0) -> Fit:
    """Weights proportional to each member's validation `metric` (negative kappa counts as 0),
    raised to `power`: 1 is the original paper's rule, higher sharpens towards the best members."""
    def fit(probs, labels):
        return normalised(np.clip(member_scores(probs, labels, metric), 0.0, None) ** power)
    return fit


def best_single(metric: str) -> Fit:
    def fit(probs, labels):
        singles = np.eye(probs.shape[0])
        return singles[best_weighting(probs, labels, singles, metric)]
    return fit


def top_k(metric: str, k: int) -> Fit:
    """Equal weights on the k members with the best validation score."""
    def fit(probs, labels):
        errors = regret(metric, member_scores(probs, labels, metric))
        # lowest regret first; among equal scores the later member, as this scheme always chose
        chosen = np.lexsort((-np.arange(len(errors)), errors))[:k]
        weights = np.zeros(probs.shape[0])
        weights[chosen] = 1.0 / len(chosen)
        return weights
    return fit


def simplex_grid_points(models: int, step: float) -> np.ndarray:
    """Every weighting on the simplex whose weights are multiples of `step` (K, models)."""
    parts = int(round(1.0 / step))
    if not math.isclose(parts * step, 1.0):
        raise AllclsError(f"schemes.simplex_grid.step={step} must divide 1 (e.g. 0.05, 0.1, 0.25).")
    # stars and bars: choose where the models-1 bars go among parts+models-1 places
    bars = np.array(list(itertools.combinations(range(parts + models - 1), models - 1)), dtype=np.int64)
    edges = np.concatenate([np.full((len(bars), 1), -1), bars, np.full((len(bars), 1), parts + models - 1)], axis=1)
    return (np.diff(edges, axis=1) - 1) / parts


def simplex_grid(metric: str, step: float, rule: str, max_weightings: int) -> Fit:
    def fit(probs, labels):
        models = probs.shape[0]
        count = math.comb(int(round(1 / step)) + models - 1, models - 1)
        if count > max_weightings:
            raise AllclsError(
                f"The simplex grid with step {step} over {models} models has {count:,} weightings, more than "
                f"schemes.simplex_grid.max_weightings={max_weightings:,}. Use a larger step, fewer runs, or "
                "switch it off (schemes.simplex_grid=null); greedy and log-loss weights scale to many models.")
        grid = simplex_grid_points(models, step)
        return grid[best_weighting(probs, labels, grid, metric, rule)]
    return fit


def greedy(metric: str, rule: str, iterations: int, bags: int, bag_fraction: float, seed: int) -> Fit:
    """Forward selection with replacement from the library of members, bagged (Caruana et al.
    2004): start from the best member, add the member that most improves the ensemble, repeat;
    weights are how often each member was picked, averaged over bags of random member subsets."""
    def select(probs, labels, members: np.ndarray) -> np.ndarray:
        candidates = np.zeros((len(members), probs.shape[0]))
        candidates[np.arange(len(members)), members] = 1
        counts = candidates[best_weighting(probs, labels, candidates, metric, rule)].copy()
        for _ in range(iterations - 1):
            trials = (counts + candidates) / (counts.sum() + 1)
            counts += candidates[best_weighting(probs, labels, trials, metric, rule)]
        return counts / counts.sum()

    def fit(probs, labels):
        models = probs.shape[0]
        if bags <= 1 or models < 3:
            return select(probs, labels, np.arange(models))
        rng = np.random.default_rng(seed)
        size = max(2, int(round(bag_fraction * models)))
        return np.mean([select(probs, labels, np.sort(rng.choice(models, size, replace=False)))
                        for _ in range(bags)], axis=0)
    return fit


def min_log_loss(rule: str) -> Fit:
    """Weights on the simplex that minimise the ensemble's validation log loss (a convex problem
    for both arithmetic and geometric means; solved with SLSQP)."""
    def fit(probs, labels):
        models, samples, _ = probs.shape

        def loss(w):
            return float(scores(combine(probs, w[None], rule), labels, ("log_loss",))["log_loss"][0])

        start = np.full(models, 1.0 / models)
        result = minimize(loss, start, method="SLSQP", bounds=[(0.0, 1.0)] * models,
                          constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
                          options={"maxiter": 200, "ftol": 1e-10})
        return normalised(result.x if result.success else start)
    return fit


# --- from the config: the settings of each scheme --------------------------------------------------

@dataclass(frozen=True)
class NoSettings:
    """equal, majority_vote, best_single, log_loss: on ({}) or off (null)."""


@dataclass(frozen=True)
class ProportionalSettings:
    metrics: tuple[str, ...] = ("accuracy", "f1_weighted", "auroc", "kappa")
    powers: tuple[float, ...] = (1,)


@dataclass(frozen=True)
class TopKSettings:
    k: tuple[int, ...] = (2, 3)


@dataclass(frozen=True)
class SimplexGridSettings:
    step: float = 0.05
    max_weightings: int = 200_000


@dataclass(frozen=True)
class GreedySettings:
    iterations: int = 25
    bags: int = 20
    bag_fraction: float = 0.5


SETTINGS = {"equal": NoSettings, "proportional": ProportionalSettings, "majority_vote": NoSettings,
            "best_single": NoSettings, "top_k": TopKSettings, "simplex_grid": SimplexGridSettings,
            "greedy": GreedySettings, "log_loss": NoSettings}


def build_schemes(config: Mapping[str, Any], metric: str, rule: str, seed: int, members: int) -> list[Scheme]:
    """The schemes that `schemes:` in conf/ensemble.yaml switches on, each with a readable name
    (top-k with k >= the number of members is left out: it is the equal-weights scheme)."""
    unknown = set(config) - set(SETTINGS)
    if unknown:
        raise AllclsError(f"Unknown ensemble scheme(s) {sorted(unknown)}: the schemes are {sorted(SETTINGS)}.")
    on = {name: typed(SETTINGS[name], section, f"schemes.{name}")
          for name, section in config.items() if section is not None}
    result: list[Scheme] = []
    if "equal" in on:
        result.append(Scheme("equal", equal, rule, "equal"))
    if "proportional" in on:
        for member_metric in on["proportional"].metrics:
            for power in on["proportional"].powers:
                name = f"proportional:{member_metric}" + (f"^{power:g}" if power != 1 else "")
                result.append(Scheme(name, proportional(member_metric, power), rule, "proportional"))
    if "majority_vote" in on:
        result.append(Scheme("majority_vote", equal, "vote", "vote"))
    if "best_single" in on:
        result.append(Scheme(f"best_single:{metric}", best_single(metric), rule, "best_single"))
    if "top_k" in on:
        for k in (int(k) for k in on["top_k"].k if int(k) < members):
            result.append(Scheme(f"top_{k}:{metric}", top_k(metric, k), rule, "top_k"))
    if "simplex_grid" in on:
        grid = on["simplex_grid"]
        step = float(grid.step)
        result.append(Scheme(f"simplex_grid:{step:g}", simplex_grid(metric, step, rule, int(grid.max_weightings)),
                             rule, "simplex_grid"))
    if "greedy" in on:
        g = on["greedy"]
        result.append(Scheme("greedy_caruana", greedy(metric, rule, int(g.iterations), int(g.bags),
                                                      float(g.bag_fraction), seed), rule, "greedy"))
    if "log_loss" in on:
        result.append(Scheme("min_log_loss", min_log_loss(rule), rule, "log_loss"))
    if not result:
        raise AllclsError("Every ensemble scheme is switched off: switch at least one on in `schemes`.")
    return result
