"""Accuracy, corrected-label accuracy and confusion matrices (NumPy in, floats out)."""

from __future__ import annotations

import numpy as np


def accuracy(pred: np.ndarray, true: np.ndarray) -> float:
    """Fraction of ``pred (N,)`` equal to ``true (N,)``; NaN for N = 0."""
    pred, true = np.asarray(pred), np.asarray(true)
    return float((pred == true).mean()) if true.size else float("nan")


def corrected_label_accuracy(
    soft: np.ndarray, true: np.ndarray, is_noisy: np.ndarray
) -> dict[str, float]:
    """Accuracy of ``argmax ỹ`` against the true labels.

    Parameters
    ----------
    soft : (N, C) soft labels; true : (N,) int; is_noisy : (N,) bool (given ≠ true).

    Returns
    -------
    ``{'all', 'clean', 'noisy'}``: over all samples, the originally clean ones and
    the originally noisy ones (NaN where a group is empty).
    """
    pred = np.asarray(soft).argmax(1)
    true, noisy = np.asarray(true), np.asarray(is_noisy, dtype=bool)
    return {
        "all": accuracy(pred, true),
        "clean": accuracy(pred[~noisy], true[~noisy]),
        "noisy": accuracy(pred[noisy], true[noisy]),
    }


def confusion_matrix(true: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts, rows = true class, columns = predicted/given class."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(true), np.asarray(pred)), 1)
    return m


def group_mean(values: np.ndarray, mask: np.ndarray) -> float:
    """Mean of ``values`` where ``mask`` is true, ignoring NaN; NaN if nothing is left."""
    v = np.asarray(values, dtype=np.float64)[np.asarray(mask, dtype=bool)]
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")
