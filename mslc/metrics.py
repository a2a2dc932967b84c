"""Accuracy, corrected-label accuracy and confusion matrices (NumPy in, floats out)."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np


def accuracy(pred: np.ndarray, true: np.ndarray) -> float:
    """Fraction of ``pred (N,)`` equal to ``true (N,)``; NaN for N = 0."""
    pred, true = np.asarray(pred), np.asarray(true)
    return float((pred == true).mean()) if true.size else float("nan")


def corrected_label_accuracy(soft: np.ndarray, true: np.ndarray, is_noisy: np.ndarray) -> dict[str, float]:
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
    f1 = (
        2 * precision * recall / (precision + recall)
        if not (np.isnan(precision) or np.isnan(recall)) and precision + recall > 0
        else float("nan")
    )
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


def label_posterior(y_hat: np.ndarray, given: np.ndarray, transition: np.ndarray | None) -> np.ndarray:
    """The probability of each class being a sample's true one, from the model and the given
    label, without any true label: ``π_ic ∝ ŷ_ic · T[c, y_i]`` (Bayes, the model's prediction as
    the prior and the noise transition as the likelihood of the given label).

    Parameters
    ----------
    y_hat : (N, C)
        The model's predictions, rows sum to 1.
    given : (N,) int64
        Given (noisy) labels.
    transition : (C, C) or None
        ``T[true, given]``, estimated on trusted data (GLC's estimate); None: ``π = ŷ``.

    Returns
    -------
    (N, C) rows sum to 1 (``ŷ`` where a row's evidence is all zero).
    """
    import torch

    from mslc.corrector import transition_posterior

    y_hat = np.asarray(y_hat, dtype=np.float64)
    if transition is None:
        return y_hat
    return transition_posterior(
        torch.from_numpy(y_hat),
        torch.as_tensor(np.asarray(given), dtype=torch.int64),
        torch.as_tensor(np.asarray(transition), dtype=torch.float64),
    ).numpy()


def review_budget(
    confidence: np.ndarray, flagged: np.ndarray, right: np.ndarray, thresholds: np.ndarray | None = None
) -> list[dict]:
    """For each confidence threshold ``t``: how many flags have confidence ≥ t and the
    estimated share of them that are right (the mean of ``right`` over them).

    Parameters
    ----------
    confidence : (N,) float
        The probability of each sample's corrected label under ỹ (what ``relabel.csv`` is cut on).
    flagged : (N,) bool
        Corrected label ≠ given label.
    right : (N,) float
        Each sample's estimated probability that its corrected label is the true one (for
        example :func:`label_posterior` at the corrected class; or true correctness, 0/1, to
        measure the estimate).
    thresholds : (K,) float, default 0, 0.05, …, 0.95

    Returns
    -------
    K rows ``{threshold, flags, precision, right, wrong}``: ``precision`` NaN where no flag
    passes; ``right`` / ``wrong`` the expected counts.
    """
    t = np.round(np.arange(0.0, 1.0, 0.05), 2) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    conf, r = np.asarray(confidence, dtype=np.float64), np.asarray(right, dtype=np.float64)
    fl = np.asarray(flagged, dtype=bool)
    rows = []
    for th in t:
        sel = fl & (conf >= th)
        n = int(sel.sum())
        hit = float(r[sel].sum())
        rows.append(
            {
                "threshold": float(th),
                "flags": n,
                "precision": hit / n if n else float("nan"),
                "right": hit,
                "wrong": n - hit,
            }
        )
    return rows


def choose_threshold(budget: list[dict], *, target: float = 0.95, key: str = "precision") -> float:
    """The lowest threshold of ``budget`` (:func:`review_budget`) whose flags are estimated
    at least ``target`` right; 1.0 (no flag) when none is.

    ``key="lower"``: by the rows' lower bound (:data:`LOWER_BOUND_Z`, which holds for every
    row at once, so any row that passes may be taken). ``key="precision"``: by the estimate
    alone, which has no such guarantee; there every higher threshold must pass too (more flags
    at the same trust)."""
    ok = [row["flags"] == 0 or row[key] >= target for row in budget]
    for i, row in enumerate(budget):
        if row["flags"] > 0 and (ok[i] if key == "lower" else all(ok[i:])):
            return row["threshold"]
    return 1.0


def wilson_interval(k: np.ndarray, n: np.ndarray, *, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of the proportions ``k / n`` (elementwise; 95% at ``z = 1.96``);
    ``(0, 1)`` where ``n = 0``."""
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    safe = np.maximum(n, 1.0)
    p = k / safe
    den = 1.0 + z * z / safe
    mid = (p + z * z / (2 * safe)) / den
    half = z * np.sqrt(p * (1 - p) / safe + z * z / (4 * safe * safe)) / den
    return np.where(n > 0, mid - half, 0.0), np.where(n > 0, mid + half, 1.0)


CALIBRATION_EDGES = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0001)


def clean_split_calibration(
    probs: np.ndarray, labels: np.ndarray, transition: np.ndarray, *, edges=CALIBRATION_EDGES
) -> list[dict]:
    """How :func:`label_posterior`'s probability of a correction compares with how often it is
    right, measured on a clean split the model did not train on, without any true training
    label: each clean sample of class ``c`` is given every label ``g`` with weight
    ``T[c, g]`` (the estimated noise), its posterior's arg-max is the correction, and where that
    differs from ``g`` (a flag) its posterior is the estimate and ``argmax == c`` the truth.

    Parameters
    ----------
    probs : (n, C) the model's predictions on the clean split; labels : (n,) int64 its labels;
    transition : (C, C) ``T[true, given]`` estimated on the trusted meta set.

    Returns
    -------
    Per bin of the estimate (``edges``): ``lo``, ``hi``, ``weight`` (the flags' total weight),
    ``n_eff`` (their effective number, ``(Σw)² / Σw²``: what ``true``'s sampling error goes
    by), ``estimated`` and ``true`` (weighted means; NaN where the bin is empty).
    """
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    t = np.asarray(transition, dtype=np.float64)
    n, c = probs.shape
    est_all, right_all, w_all = [], [], []
    for g in range(c):
        post = label_posterior(probs, np.full(n, g), t)
        corrected = post.argmax(1)
        flag = corrected != g
        est_all.append(post[np.arange(n), corrected][flag])
        right_all.append((corrected == labels)[flag])
        w_all.append(t[labels, g][flag])
    est, right, w = np.concatenate(est_all), np.concatenate(right_all), np.concatenate(w_all)
    bins = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (est >= lo) & (est < hi)
        wt = float(w[sel].sum())
        w2 = float((w[sel] ** 2).sum())
        bins.append(
            {
                "lo": float(lo),
                "hi": float(hi),
                "weight": wt,
                "n_eff": wt * wt / w2 if w2 > 0 else 0.0,
                "estimated": float((est[sel] * w[sel]).sum() / wt) if wt > 0 else float("nan"),
                "true": float((right[sel] * w[sel]).sum() / wt) if wt > 0 else float("nan"),
            }
        )
    return bins


def calibration_bin(est: np.ndarray, bins: list[dict]) -> np.ndarray:
    """(N,) int64: the position in ``bins`` (:func:`clean_split_calibration`) of the bin each
    of ``est`` (N,) falls in (``lo ≤ est < hi``); -1 where none."""
    est = np.asarray(est, dtype=np.float64)
    out = np.full(est.shape, -1, dtype=np.int64)
    for j, b in enumerate(bins):
        out[(est >= b["lo"]) & (est < b["hi"])] = j
    return out


def calibrate(est: np.ndarray, bins: list[dict], *, min_weight: float = 10.0) -> np.ndarray:
    """``est`` (N,) moved by its bin's measured bias (``estimated − true`` of
    :func:`clean_split_calibration`), clipped to [0, 1]; bins weighing less than
    ``min_weight`` flags leave it as it is."""
    est = np.asarray(est, dtype=np.float64)
    out = est.copy()
    where = calibration_bin(est, bins)
    for j, b in enumerate(bins):
        if b["weight"] >= min_weight and np.isfinite(b["true"]):
            sel = where == j
            out[sel] = np.clip(est[sel] - (b["estimated"] - b["true"]), 0.0, 1.0)
    return out


BUDGET_CUTS = 20  # the review budget's thresholds, 0, 0.05, … 0.95
# One-sided 95% for all the budget's cuts at once (Bonferroni: 5% / 20 each): the run may then
# take whichever cut passes, the lowest, and it is still ≥ the target with 95% confidence.
LOWER_BOUND_Z = NormalDist().inv_cdf(1.0 - 0.05 / BUDGET_CUTS)  # 2.807


def calibration_variance(bins: list[dict], *, min_weight: float = 10.0) -> np.ndarray:
    """(B,) the sampling variance each bin of :func:`clean_split_calibration` adds to the
    estimate of the flags it moves: its measured share of right flags comes from ``n_eff``
    validation flags, ``p̃(1 − p̃) / n_eff`` with ``p̃ = (true · n_eff + 1) / (n_eff + 2)``
    (never 0, also where every validation flag was right); a bin too light to calibrate
    (``weight < min_weight``: its flags keep the uncalibrated estimate, whose bias is not
    known) the binomial worst case ``1 / (4 · max(n_eff, 1))``."""
    out = []
    for b in bins:
        n = max(float(b.get("n_eff", b["weight"])), 0.0)
        if calibrated(b, min_weight=min_weight):
            p = (b["true"] * n + 1.0) / (n + 2.0)
            out.append(p * (1.0 - p) / n)
        else:
            out.append(0.25 / max(n, 1.0))
    return np.asarray(out, dtype=np.float64)


def calibrated(b: dict, *, min_weight: float = 10.0) -> bool:
    """Whether a bin of :func:`clean_split_calibration` moves its flags' estimate (heavy
    enough, with validation flags to measure)."""
    return b["weight"] >= min_weight and bool(np.isfinite(b["true"])) and float(b.get("n_eff", b["weight"])) > 0


def precision_se(
    confidence: np.ndarray,
    flagged: np.ndarray,
    bin_index: np.ndarray,
    bins: list[dict],
    thresholds: np.ndarray | None = None,
    *,
    estimate: np.ndarray | None = None,
    z: float | None = None,
    min_weight: float = 10.0,
) -> np.ndarray:
    """The standard error of :func:`review_budget`'s estimated precision at each threshold
    that comes from the clean split's sampling error: the flags moved by one calibration bin
    share its error, the bins' errors are independent, so
    ``var_t = Σ_b (n_bt / n_t)² · var_b`` (``n_bt`` the flags at or above ``t`` in bin ``b``,
    ``var_b`` of :func:`calibration_variance`). A bin too light to calibrate takes the binomial
    worst case there, but with ``estimate`` no more than ``(ē_bt / z)²`` (``ē_bt`` the mean
    estimate of its flags at or above ``t``): its flags cannot be less than all wrong, so the
    lower bound ``estimate − z · se`` never counts them below that. What it leaves out: the
    error of the transition estimate itself and of the model, shared by the validation split
    and the training flags.

    Parameters
    ----------
    confidence : (N,) float; flagged : (N,) bool — as :func:`review_budget`'s.
    bin_index : (N,) int64
        Each sample's calibration bin (:func:`calibration_bin` of its uncalibrated estimate);
        -1: not calibrated, no sampling error counted.
    bins : list of dict, :func:`clean_split_calibration`'s.
    thresholds : (K,) float, default 0, 0.05, …, 0.95
    estimate : (N,) float, optional
        Each sample's estimated probability of being right (``est_correct``): caps the
        variance of the bins too light to calibrate, as above.
    z : the lower bound's multiplier the cap is for (default :data:`LOWER_BOUND_Z`).

    Returns
    -------
    (K,) float, 0 where no flag passes.
    """
    t = np.round(np.arange(0.0, 1.0, 0.05), 2) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    conf, fl = np.asarray(confidence, dtype=np.float64), np.asarray(flagged, dtype=bool)
    where = np.asarray(bin_index, dtype=np.int64)
    if where.size and where.max() >= len(bins):
        raise ValueError(f"bin_index holds bin {int(where.max())}, but there are {len(bins)} calibration bins")
    var_b = calibration_variance(bins, min_weight=min_weight)
    light = [j for j, b in enumerate(bins) if not calibrated(b, min_weight=min_weight)]
    est = None if estimate is None else np.asarray(estimate, dtype=np.float64)
    z = LOWER_BOUND_Z if z is None else z
    out = np.zeros(len(t))
    for k, th in enumerate(t):
        sel = fl & (conf >= th)
        n = int(sel.sum())
        if n:
            counts = np.bincount(where[sel & (where >= 0)], minlength=len(bins))
            var = var_b.copy()
            for j in light if est is not None else ():
                if counts[j]:
                    var[j] = min(var[j], (est[sel & (where == j)].mean() / z) ** 2)
            out[k] = float(np.sqrt(((counts / n) ** 2 * var).sum()))
    return out
