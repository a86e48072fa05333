"""Temperature scaling (Guo et al. 2017): one scalar T, fitted on validation predictions, that
softens (T > 1) or sharpens (T < 1) every prediction. Applied to log-probabilities, which are the
logits up to a per-row constant, so it works on any prediction table, ensembles included. It
never changes the predicted class."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from allcls.metrics.vectorised import EPS, expected_calibration_error, log_loss


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    logits = np.log(np.clip(probabilities, EPS, 1.0)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=-1, keepdims=True)


def calibrated(probabilities: np.ndarray, temperature: float | None) -> np.ndarray:
    """Probabilities after a fitted temperature; as they are where none was fitted (None)."""
    return probabilities if temperature is None else apply_temperature(probabilities, temperature)


BOUNDS = (0.1, 10.0)


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float | None:
    """The temperature in [0.1, 10] that minimises the negative log-likelihood of `labels`, or None
    when every prediction is right: then the likelihood only grows as T shrinks towards 0, and a
    fitted T would make every later mistake a confident one."""
    if (probabilities.argmax(axis=1) == labels).all():
        return None
    rows = np.arange(len(labels))

    def nll(log_temperature: float) -> float:
        scaled = apply_temperature(probabilities, float(np.exp(log_temperature)))
        return float(-np.log(np.clip(scaled[rows, labels], EPS, 1.0)).mean())

    result = minimize_scalar(nll, bounds=(np.log(BOUNDS[0]), np.log(BOUNDS[1])), method="bounded")
    return float(np.exp(result.x))


def choose_temperature(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float | None, str]:
    """The temperature a model keeps, and why: one fitted on validation is kept only where it lowers
    the validation log loss without raising the validation ECE (a temperature that trades calibration
    for likelihood would make the number shown as a probability less true where it is read)."""
    if not len(labels):
        return None, "none: no validation predictions to fit one on"
    temperature = fit_temperature(probabilities, labels)
    if temperature is None:
        return None, ("none: every validation prediction was right, and a temperature fitted there would make "
                      "mistakes confident")
    scaled = apply_temperature(probabilities, temperature)
    before = (float(log_loss(probabilities[None], labels)[0]), float(expected_calibration_error(probabilities[None],
                                                                                              labels)[0]))
    after = (float(log_loss(scaled[None], labels)[0]), float(expected_calibration_error(scaled[None], labels)[0]))
    measured = (f"validation log loss {before[0]:.3f} -> {after[0]:.3f}, ECE {before[1]:.3f} -> {after[1]:.3f} "
                f"at T = {temperature:.2f}")
    if after[0] >= before[0] - 1e-9:
        return None, f"not kept: it did not lower the validation log loss ({measured})"
    if after[1] > before[1] + 1e-9:
        return None, f"not kept: it made the validation ECE worse ({measured})"
    return temperature, f"kept: {measured}"
