"""Scoring many weightings of the members at once, and picking the best of them."""

from __future__ import annotations

import numpy as np

from allcls.inference.combining import Rule, combine, decision_base, predicted_classes
from allcls.metrics.names import regret
from allcls.metrics.vectorised import CONFUSION_METRICS, EPS, confusion, confusion_metrics, scores

CHUNK_ELEMENTS = 8_000_000  # weightings are scored in chunks of about this many probabilities


def sorted_by_class(probs: np.ndarray, labels: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The samples in `order`, the probabilities laid out C-contiguous again: indexing the samples'
    axis leaves them strided, and a matrix product over strided members runs several times slower."""
    return np.ascontiguousarray(probs[:, order]), labels[order]


def score_weightings(probs: np.ndarray, labels: np.ndarray, weightings: np.ndarray, metric: str,
                     rule: Rule = "arithmetic") -> np.ndarray:
    """One metric for each of many weightings (K, models) -> (K,), in memory-bounded chunks."""
    order = np.argsort(labels, kind="stable")  # samples grouped by class: confusion counts read views
    probs, labels = sorted_by_class(probs, labels, order)
    per_weighting = probs.shape[1] * probs.shape[2]
    chunk = max(1, CHUNK_ELEMENTS // per_weighting)
    parts = []
    for start in range(0, len(weightings), chunk):
        block = weightings[start:start + chunk]
        if metric in CONFUSION_METRICS:
            matrices = confusion(predicted_classes(probs, block, rule), labels, probs.shape[2])
            parts.append(confusion_metrics(matrices)[metric])
        else:
            parts.append(scores(combine(probs, block, rule), labels, (metric,))[metric])
    return np.concatenate(parts)


def best_weighting(probs: np.ndarray, labels: np.ndarray, weightings: np.ndarray, metric: str,
                   rule: Rule = "arithmetic") -> int:
    """Index of the weighting with the best `metric`; ties (common for accuracy-like metrics on
    small sets) go to the lowest log loss: the best calibrated of the equally good."""
    return int(best_weightings(probs, labels, weightings[None], metric, rule)[0])


def best_weighting_per_fold(probs: np.ndarray, labels: np.ndarray, weightings: np.ndarray, metric: str, rule: Rule,
                            held_out: list[np.ndarray]) -> list[int]:
    """`best_weighting` fitted without each held-out fold, for a confusion metric: every weighting's
    predictions are made once, and a fold's counts are all counts minus the held-out ones (exact:
    counts are integers), instead of predicting every weighting again for every fold."""
    order = np.argsort(labels, kind="stable")
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    probs, labels = sorted_by_class(probs, labels, order)
    held_out = [np.sort(position[fold]) for fold in held_out]  # still grouped by class: slices stay views
    classes = probs.shape[2]
    chunk = max(1, CHUNK_ELEMENTS // (probs.shape[1] * classes))
    values: list[list[np.ndarray]] = [[] for _ in held_out]  # each fold's metric, chunk by chunk
    for start in range(0, len(weightings), chunk):
        predicted = predicted_classes(probs, weightings[start:start + chunk], rule)
        everything = confusion(predicted, labels, classes)
        for fold, part in zip(held_out, values, strict=True):
            fitting = everything - confusion(predicted[:, fold], labels[fold], classes)
            part.append(confusion_metrics(fitting)[metric])
    chosen = []
    for fold, part in zip(held_out, values, strict=True):
        errors = regret(metric, np.concatenate(part))
        tied = np.flatnonzero(np.isclose(errors, errors.min(), rtol=0, atol=1e-12))
        if len(tied) > 1:
            keep = np.setdiff1d(np.arange(len(labels)), fold)
            tied = tied[[np.argmin(score_weightings(probs[:, keep], labels[keep], weightings[tied], "log_loss", rule))]]
        chosen.append(int(tied[0]))
    return chosen


def best_weightings(probs: np.ndarray, labels: np.ndarray, weightings: np.ndarray, metric: str,
                    rule: Rule = "arithmetic") -> np.ndarray:
    """`best_weighting` for several independent searches at once: weightings (B, K, models) ->
    the index of the best weighting of each search (B,), all scored in one batch."""
    searches, options, models = weightings.shape
    flat = weightings.reshape(-1, models)
    errors = regret(metric, score_weightings(probs, labels, flat, metric, rule)).reshape(searches, options)
    tied = np.isclose(errors, errors.min(axis=1, keepdims=True), rtol=0, atol=1e-12)
    if not (tied.sum(axis=1) > 1).any():
        return tied.argmax(axis=1)
    losses = np.full(flat.shape[0], np.inf)
    losses[tied.ravel()] = score_weightings(probs, labels, flat[tied.ravel()], "log_loss", rule)
    return losses.reshape(searches, options).argmin(axis=1)


class Additions:
    """The inner step of greedy forward selection, for several ensembles at once: which candidate
    member's addition scores best. An ensemble is given as how often each member was picked; an
    addition's sums are the ensemble's sums plus the candidate's own, so no weighting is multiplied
    out, and the validation data is sorted and transformed once for all steps."""

    def __init__(self, probs: np.ndarray, labels: np.ndarray, rule: Rule = "arithmetic"):
        order = np.argsort(labels, kind="stable")  # samples grouped by class: confusion counts read views
        (self.probs, self.labels), self.rule = sorted_by_class(probs, labels, order), rule
        self.classes = probs.shape[2]
        base = decision_base(self.probs, rule)
        self.base = base[:, :, 1] - base[:, :, 0] if self.classes == 2 else base
        # What the rule sums before normalising, class-major (models, classes, samples): the sums over
        # classes are then additions of whole rows, and the true class is a mask.
        summand = np.log(np.clip(self.probs, EPS, 1.0)) if rule == "geometric" else base
        self.summand = np.ascontiguousarray(summand.transpose(0, 2, 1))
        self.true_class = self.labels[None, :] == np.arange(self.classes)[:, None]  # (classes, samples)
        if rule != "geometric":
            self.true_sums = (self.summand * self.true_class).sum(axis=1)
            self.all_sums = self.summand.sum(axis=1)

    def best(self, counts: np.ndarray, candidates: np.ndarray, metric: str) -> np.ndarray:
        """For picks so far (B, models) and candidate members (B, size): the index into each row of
        `candidates` of the best addition; ties go to the lowest log loss, as in `best_weighting`."""
        searches, size = candidates.shape
        trials = counts[:, None, :] + np.eye(self.probs.shape[0])[candidates]  # (B, size, models)
        if metric not in CONFUSION_METRICS:
            weightings = trials / trials.sum(axis=2, keepdims=True)
            return best_weightings(self.probs, self.labels, weightings, metric, self.rule)
        if self.classes == 2:
            predicted = (counts @ self.base)[:, None, :] + self.base[candidates] > 0
        else:
            current = (counts @ self.base.reshape(len(self.base), -1)).reshape(searches, 1, *self.base.shape[1:])
            predicted = (current + self.base[candidates]).argmax(axis=3)
        matrices = confusion(predicted.reshape(searches * size, -1), self.labels, self.classes)
        errors = regret(metric, confusion_metrics(matrices)[metric]).reshape(searches, size)
        tied = np.isclose(errors, errors.min(axis=1, keepdims=True), rtol=0, atol=1e-12)
        if not (tied.sum(axis=1) > 1).any():
            return tied.argmax(axis=1)
        search, option = np.nonzero(tied)
        losses = np.full(tied.shape, np.inf)
        losses[search, option] = self.log_losses(counts, search, candidates[search, option])
        return losses.argmin(axis=1)

    def log_losses(self, counts: np.ndarray, search: np.ndarray, members: np.ndarray) -> np.ndarray:
        """The log loss of ensembles `search` (rows of picks (B, models)) with one more of `members`
        (A,), as `combine` and `scores` would give it. The ensembles' sums are made once each, not
        once per addition: many additions tie, and they share their ensemble."""
        models, classes, samples = self.summand.shape
        picked = counts.sum(axis=1)[search]
        if self.rule == "geometric":  # a softmax of the sums: every class is needed
            sums = (counts @ self.summand.reshape(models, -1)).reshape(len(counts), classes, samples)
            sums = (sums[search] + self.summand[members]) / (picked[:, None, None] + 1)
            sums = np.exp(sums - sums.max(axis=1, keepdims=True))
            true_class = (sums * self.true_class).sum(axis=1) / sums.sum(axis=1)
        else:  # linear: the true class's sum over the sum of all classes
            true_class = ((counts @ self.true_sums)[search] + self.true_sums[members]) \
                / ((counts @ self.all_sums)[search] + self.all_sums[members])
        return -np.log(np.clip(true_class, EPS, 1.0)).mean(axis=1)
