"""Temperature scaling (Guo et al. 2017): one scalar T, fitted on validation predictions, that
softens (T > 1) or sharpens (T < 1) every prediction. Applied to log-probabilities, which are the
logits up to a per-row constant, so it works on any prediction table, ensembles included. It
never changes the predicted class."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from allcls.scoring import EPS


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    logits = np.log(np.clip(probabilities, EPS, 1.0)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=-1, keepdims=True)


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of `labels`."""
    rows = np.arange(len(labels))

    def nll(log_temperature: float) -> float:
        scaled = apply_temperature(probabilities, float(np.exp(log_temperature)))
        return float(-np.log(np.clip(scaled[rows, labels], EPS, 1.0)).mean())

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))
