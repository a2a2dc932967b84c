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


def detection_scores(flagged: np.ndarray, is_noisy: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of ``flagged`` as a detector of wrong labels.

    Parameters
    ----------
    flagged : (N,) bool
        Samples the method calls mislabelled (its corrected label ≠ the given one).
    is_noisy : (N,) bool
        Samples whose given label is wrong.

    Returns
    -------
    ``{'precision', 'recall', 'f1'}``: precision is NaN when nothing is flagged, recall
    when nothing is wrong, F1 when either is NaN or both are 0.
    """
    flagged, noisy = np.asarray(flagged, dtype=bool), np.asarray(is_noisy, dtype=bool)
    if flagged.shape != noisy.shape:
        raise ValueError(f"flagged and is_noisy differ in shape: {flagged.shape} vs {noisy.shape}")
    tp = float((flagged & noisy).sum())
    precision = tp / flagged.sum() if flagged.any() else float("nan")
    recall = tp / noisy.sum() if noisy.any() else float("nan")
    f1 = (2 * precision * recall / (precision + recall)
          if not (np.isnan(precision) or np.isnan(recall)) and precision + recall > 0 else float("nan"))
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


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
