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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize

from allcls.config.sections import typed
from allcls.ensemble.weight_search import Additions, best_weighting, best_weighting_per_fold
from allcls.errors import AllclsError
from allcls.inference.combining import Rule
from allcls.metrics.names import regret
from allcls.metrics.vectorised import CONFUSION_METRICS, EPS, scores

Fit = Callable[[np.ndarray, np.ndarray], np.ndarray]


# Weights fitted without each held-out fold (for cross-validation), where sharing work pays.
FitFolds = Callable[[np.ndarray, np.ndarray, list], list]


@dataclass(frozen=True)
class Scheme:
    name: str
    fit: Fit
    rule: Rule = "arithmetic"
    family: str = ""
    fit_folds: FitFolds | None = None  # None: `fit` once per fold

    def weights_per_fold(self, probs: np.ndarray, labels: np.ndarray, held_out: list[np.ndarray]) -> list:
        """The weights fitted on all samples but each held-out fold's."""
        if self.fit_folds is not None:
            return self.fit_folds(probs, labels, held_out)
        everything = np.arange(len(labels))
        return [self.fit(probs[:, keep], labels[keep]) for keep in
                (np.setdiff1d(everything, fold) for fold in held_out)]


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


def best_members(probs: np.ndarray, labels: np.ndarray, metric: str, k: int) -> np.ndarray:
    """Indices of the k members with the best validation score (among equal scores the later one)."""
    errors = regret(metric, member_scores(probs, labels, metric))
    return np.lexsort((-np.arange(len(errors)), errors))[:k]


def top_k(metric: str, k: int) -> Fit:
    """Equal weights on the k members with the best validation score."""
    def fit(probs, labels):
        chosen = best_members(probs, labels, metric, k)
        weights = np.zeros(probs.shape[0])
        weights[chosen] = 1.0 / len(chosen)
        return weights
    return fit


def grid_parts(step: float) -> int:
    parts = int(round(1.0 / step))
    if parts < 1 or not math.isclose(parts * step, 1.0):
        raise AllclsError(f"schemes.simplex_grid.step={step} must divide 1 (e.g. 0.05, 0.1, 0.25).")
    return parts


def simplex_grid_points(models: int, step: float) -> np.ndarray:
    """Every weighting on the simplex whose weights are multiples of `step` (K, models)."""
    parts = grid_parts(step)
    # stars and bars: choose where the models-1 bars go among parts+models-1 places
    bars = np.array(list(itertools.combinations(range(parts + models - 1), models - 1)), dtype=np.int64)
    edges = np.concatenate([np.full((len(bars), 1), -1), bars, np.full((len(bars), 1), parts + models - 1)], axis=1)
    return (np.diff(edges, axis=1) - 1) / parts


def grid_members(models: int, step: float, max_weightings: int) -> int:
    """How many members a grid of `step` can cover within `max_weightings` weightings (at least one)."""
    parts, size = grid_parts(step), 1
    while size < models and math.comb(parts + size, size) <= max_weightings:
        size += 1
    return size


class SimplexGrid:
    """The best weighting of the grid of `step`; over the best members by validation score when a
    grid over all of them would exceed `max_weightings` (the others get no weight). Across
    cross-validation folds (`fit_folds`), each weighting is predicted once for all folds."""

    def __init__(self, metric: str, step: float, rule: Rule, max_weightings: int):
        self.metric, self.step, self.rule, self.max_weightings = metric, step, rule, max_weightings

    def members(self, probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
        size = grid_members(probs.shape[0], self.step, self.max_weightings)
        if size == probs.shape[0]:
            return np.arange(size)
        return np.sort(best_members(probs, labels, self.metric, size))

    def fit(self, probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
        chosen = self.members(probs, labels)
        grid = simplex_grid_points(len(chosen), self.step)
        best = best_weighting(probs[chosen], labels, grid, self.metric, self.rule)
        return self._weights(probs.shape[0], chosen, grid[best])

    def fit_folds(self, probs: np.ndarray, labels: np.ndarray, held_out: list[np.ndarray]) -> list[np.ndarray]:
        keeps = [np.setdiff1d(np.arange(len(labels)), fold) for fold in held_out]
        if self.metric not in CONFUSION_METRICS:
            return [self.fit(probs[:, keep], labels[keep]) for keep in keeps]
        chosen = [tuple(self.members(probs[:, keep], labels[keep])) for keep in keeps]
        weights: list = [None] * len(held_out)
        for members in dict.fromkeys(chosen):  # folds that chose the same members share one pass
            folds = [i for i, c in enumerate(chosen) if c == members]
            grid = simplex_grid_points(len(members), self.step)
            best = best_weighting_per_fold(probs[list(members)], labels, grid, self.metric, self.rule,
                                           [held_out[i] for i in folds])
            for i, index in zip(folds, best, strict=True):
                weights[i] = self._weights(probs.shape[0], np.array(members), grid[index])
        return weights

    @staticmethod
    def _weights(models: int, chosen: np.ndarray, weighting: np.ndarray) -> np.ndarray:
        weights = np.zeros(models)
        weights[chosen] = weighting
        return weights


def greedy(metric: str, rule: Rule, iterations: int, bags: int, bag_fraction: float, seed: int) -> Fit:
    """Forward selection with replacement from the library of members, bagged (Caruana et al.
    2004): start from the best member, add the member that most improves the ensemble, repeat;
    weights are how often each member was picked, averaged over bags of random member subsets.
    The bags are independent: each step of all of them is scored in one batch."""
    def select(probs, labels, bag_members: np.ndarray) -> np.ndarray:
        """Selection counts (bags, models) for each bag's members (bags, size)."""
        additions, rows = Additions(probs, labels, rule), np.arange(len(bag_members))
        counts = np.zeros((len(bag_members), probs.shape[0]))
        for _ in range(iterations):
            counts[rows, bag_members[rows, additions.best(counts, bag_members, metric)]] += 1
        return counts / counts.sum(axis=1, keepdims=True)

    def fit(probs, labels):
        models = probs.shape[0]
        if bags <= 1 or models < 3:
            return select(probs, labels, np.arange(models)[None])[0]
        rng = np.random.default_rng(seed)
        size = max(2, int(round(bag_fraction * models)))
        bag_members = np.stack([np.sort(rng.choice(models, size, replace=False)) for _ in range(bags)])
        return select(probs, labels, bag_members).mean(axis=0)
    return fit


def min_log_loss(rule: Rule) -> Fit:
    """Weights on the simplex that minimise the ensemble's validation log loss (a convex problem
    for both arithmetic and geometric means; solved with SLSQP and the exact gradient, so its cost
    does not grow with the number of members the way finite differences do)."""
    def fit(probs, labels):
        models, samples, _ = probs.shape
        true_class = probs[:, np.arange(samples), labels]  # (models, samples)
        logs = np.log(np.clip(probs, EPS, 1.0))

        def loss_and_gradient(w):
            if rule == "geometric":
                mixed = np.einsum("m,mnc->nc", w, logs)
                mixed -= mixed.max(axis=1, keepdims=True)
                softmax = np.exp(mixed)
                softmax /= softmax.sum(axis=1, keepdims=True)
                loss = -np.log(np.clip(softmax[np.arange(samples), labels], EPS, 1.0)).mean()
                expected = np.einsum("nc,mnc->mn", softmax, logs)
                return loss, -(logs[:, np.arange(samples), labels] - expected).mean(axis=1)
            mixture = w @ true_class
            total = w.sum()
            loss = -np.log(np.clip(mixture / total, EPS, 1.0)).mean()
            return loss, -(true_class / mixture).mean(axis=1) + 1.0 / total

        start = np.full(models, 1.0 / models)
        on_simplex = {"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}
        result = minimize(loss_and_gradient, start, jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * models,
                          constraints=[on_simplex], options={"maxiter": 200, "ftol": 1e-10})
        return normalised(result.x if result.success else start)
    return fit


# --- from the config: the settings of each scheme --------------------------------------------------

# The four weightings of the paper that proposed metric-proportional ensembles of ALL classifiers
# (Mondal et al. 2021): each member weighted by its validation accuracy, F1, AUC or Cohen's kappa.
PAPER_METRICS = ("accuracy", "f1_weighted", "auroc", "kappa")


@dataclass(frozen=True)
class NoSettings:
    """equal, majority_vote, best_single, log_loss: on ({}) or off (null)."""


@dataclass(frozen=True)
class ProportionalSettings:
    metrics: tuple[str, ...] = PAPER_METRICS
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


def build_schemes(config: Mapping[str, Any], metric: str, rule: Rule, seed: int, members: int) -> list[Scheme]:
    """The schemes that `schemes:` in conf/ensemble.yaml switches on, each with a readable name
    (top-k with k >= the number of members is left out: it is the equal-weights scheme)."""
    unknown = set(config) - set(SETTINGS)
    if unknown:
        raise AllclsError(f"Unknown ensemble scheme(s) {sorted(unknown)}: the schemes are {sorted(SETTINGS)}.")
    # each switched-on scheme's settings (a dataclass of its own per scheme)
    on: dict[str, Any] = {name: typed(SETTINGS[name], section, f"schemes.{name}")
                          for name, section in config.items() if section is not None}
    result: list[Scheme] = []
    if "equal" in on:
        result.append(Scheme("equal", equal, rule, "equal"))
    if "proportional" in on:
        result += [Scheme(f"proportional:{member_metric}" + (f"^{power:g}" if power != 1 else ""),
                          proportional(member_metric, power), rule, "proportional")
                   for member_metric in on["proportional"].metrics for power in on["proportional"].powers]
    if "majority_vote" in on:
        result.append(Scheme("majority_vote", equal, "vote", "vote"))
    if "best_single" in on:
        result.append(Scheme(f"best_single:{metric}", best_single(metric), rule, "best_single"))
    if "top_k" in on:
        result += [Scheme(f"top_{k}:{metric}", top_k(metric, k), rule, "top_k")
                   for k in (int(k) for k in on["top_k"].k) if k < members]
    if "simplex_grid" in on:
        grid = on["simplex_grid"]
        step, budget = float(grid.step), int(grid.max_weightings)
        size = grid_members(members, step, budget)
        name = f"simplex_grid:{step:g}" + (f" (best {size} of {members} by {metric})" if size < members else "")
        search = SimplexGrid(metric, step, rule, budget)
        result.append(Scheme(name, search.fit, rule, "simplex_grid", search.fit_folds))
    if "greedy" in on:
        g = on["greedy"]
        result.append(Scheme("greedy_caruana", greedy(metric, rule, int(g.iterations), int(g.bags),
                                                      float(g.bag_fraction), seed), rule, "greedy"))
    if "log_loss" in on:
        result.append(Scheme("min_log_loss", min_log_loss(rule), rule, "log_loss"))
    if not result:
        raise AllclsError("Every ensemble scheme is switched off: switch at least one on in `schemes`.")
    return result
