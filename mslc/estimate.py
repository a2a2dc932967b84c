"""Truth-free estimates of how right a run's flags are, from held-out predictions.

A model's predictions on the samples it trained on lean to the labels it was fitted to, so a
flag's estimated precision read from them is biased (low where the given labels were spread
noise, high where the noise is a few class flips). Cross-fitting removes that: each training
sample is predicted by a model that did not train on it (:func:`crossfit_folds`). Pure
steps then turn those held-out predictions into each flag's probability of being right
(:func:`heldout_posterior` runs them):

* :func:`crossfit_targets`: what the held-out models learn (the soft ỹ where the noise is
  spread, its arg-max where it is a few class flips);
* :func:`binned_recalibration` / :func:`recalibrate`: where the noise is spread over many
  classes, the held-out predictions' probabilities moved to the frequencies measured on the
  clean split, per predicted class and confidence bin;
* :func:`supported_flips`: where the noise is a few class flips, which of them the given
  labels show beyond the held-out models' own mistakes on the clean split (the rest are
  removed before the fit);
* :func:`fit_transition`: the noise transition ``T[true, given]`` that makes the held-out
  predictions explain the given labels best (EM, a maximum-likelihood fit: no true label);
* :func:`mslc.metrics.label_posterior` with that transition, and
  :func:`mslc.metrics.clean_split_calibration` on the clean split, as for the run's own model.

NumPy in, NumPy out.
"""

from __future__ import annotations

import numpy as np

RECALIBRATION_EDGES = (0.0, 0.5, 0.7, 0.9, 0.99, 0.999, 1.0001)


def crossfit_folds(num_samples: int, folds: int, *, seed: int) -> np.ndarray:
    """(N,) int64: each sample's fold in ``0..folds-1``, balanced (sizes differ by at most
    one) and the same for the same ``(num_samples, folds, seed)`` on every worker. The model
    of fold ``k`` trains on every sample whose fold is not ``k`` and predicts those that are."""
    if folds < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, got {folds}")
    if num_samples < folds:
        raise ValueError(f"{num_samples} samples cannot fill {folds} folds")
    return (np.random.default_rng(seed).permutation(num_samples) % folds).astype(np.int64)


def fit_transition(
    probs: np.ndarray, given: np.ndarray, init: np.ndarray, *, iters: int = 50, tol: float = 1e-7
) -> np.ndarray:
    """The noise transition under which held-out predictions explain the given labels best:
    maximises ``Σ_i log Σ_c p_ic · T[c, y_i]`` over row-stochastic ``T`` by EM (E: each
    sample's responsibility ``r_ic ∝ p_ic · T[c, y_i]``; M: ``T[c, g] = Σ_{i: y_i = g} r_ic /
    Σ_i r_ic``). Entries that start at 0 stay 0.

    Parameters
    ----------
    probs : (N, C) float
        Each sample's predicted distribution of its true class, from a model that did not
        train on it; rows sum to 1.
    given : (N,) int64
        Given (noisy) labels.
    init : (C, C) float
        Starting transition ``T[true, given]`` (GLC's estimate, say); rows sum to 1.
    iters : int
        At most this many EM steps; it stops earlier once no entry moves by ``tol``.

    Returns
    -------
    (C, C) float64, rows sum to 1 (a class no sample is predicted to be keeps its ``init`` row).
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(given, dtype=np.int64)
    t = np.asarray(init, dtype=np.float64).copy()
    n, c = p.shape
    if t.shape != (c, c) or y.shape != (n,):
        raise ValueError(f"fit_transition: probs {p.shape}, given {y.shape} and init {t.shape} do not agree")
    onehot = np.zeros((n, c))
    onehot[np.arange(n), y] = 1.0
    for _ in range(iters):
        r = p * t[:, y].T
        r /= np.maximum(r.sum(1, keepdims=True), 1e-300)
        counts = r.T @ onehot  # (C true, C given)
        mass = counts.sum(1, keepdims=True)
        new = np.where(mass > 0, counts / np.maximum(mass, 1e-300), t)
        moved = float(np.abs(new - t).max())
        t = new
        if moved < tol:
            break
    return t


def binned_recalibration(
    probs: np.ndarray, labels: np.ndarray, *, edges=RECALIBRATION_EDGES, prior_weight: float = 5.0
) -> np.ndarray:
    """How often each class is the true one among clean samples a model predicts as class
    ``k`` with top probability in bin ``b`` of ``edges``: ``(count_c + w · mean p_c) / (n + w)``,
    the model's own mean probabilities standing in as ``w`` pseudo-samples (a bin with few
    clean samples stays near what the model says).

    Parameters
    ----------
    probs : (n, C) the model's predictions on a clean split it did not train on;
    labels : (n,) int64 their labels.

    Returns
    -------
    (C, B, C) float64: ``[k, b]`` the true-class frequencies of bin ``b`` of predicted class
    ``k`` (rows sum to 1); NaN where no clean sample fell.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if p.ndim != 2 or y.shape != (p.shape[0],):
        raise ValueError(f"binned_recalibration: probs {p.shape} and labels {y.shape} do not agree")
    c = p.shape[1]
    out = np.full((c, len(edges) - 1, c), np.nan)
    for (kk, bb), sel in _cells(p, edges):
        m = int(sel.sum())
        out[kk, bb] = (np.bincount(y[sel], minlength=c) + prior_weight * p[sel].mean(0)) / (m + prior_weight)
    return out


def recalibrate(probs: np.ndarray, table: np.ndarray, *, edges=RECALIBRATION_EDGES) -> np.ndarray:
    """``probs`` (N, C) moved to :func:`binned_recalibration`'s frequencies: in each cell
    (predicted class, top-probability bin) every class's probability is scaled by
    ``table[k, b, c] / mean p_c`` (the mean over the cell's rows of ``probs``), so the cell's
    mean becomes the clean split's frequency while the rows keep their order within it; rows
    renormalised. Cells the table lacks (NaN) are left as they are.

    Returns
    -------
    (N, C) float64, rows sum to 1.
    """
    p = np.asarray(probs, dtype=np.float64)
    out = p.copy()
    for (kk, bb), sel in _cells(p, edges):
        target = table[kk, bb]
        if np.isnan(target).any():
            continue
        mean = p[sel].mean(0)
        out[sel] = p[sel] * np.where(mean > 0, target / np.maximum(mean, 1e-300), 1.0)
    return out / np.maximum(out.sum(1, keepdims=True), 1e-300)


def _cells(p: np.ndarray, edges):
    """``((k, b), mask)`` for each non-empty cell of predicted class ``k`` and top-probability bin ``b``."""
    k = p.argmax(1)
    b = np.clip(np.searchsorted(np.asarray(edges), p.max(1), side="right") - 1, 0, len(edges) - 2)
    for kk, bb in sorted(set(zip(k.tolist(), b.tolist()))):
        yield (kk, bb), (k == kk) & (b == bb)


RECALIBRATION_PARTS = 2  # the clean split's parts for crossfit_recalibration


def crossfit_recalibration(
    train_probs: np.ndarray,
    clean_probs: np.ndarray,
    clean_labels: np.ndarray,
    *,
    blocks: int = 1,
    parts: int = RECALIBRATION_PARTS,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`recalibrate` by :func:`binned_recalibration` tables fitted out of sample: the
    clean samples are dealt into ``parts`` parts (a sample in the same part in every block) and
    the training samples likewise; part ``h`` of both is recalibrated by the table fitted on the
    clean samples outside part ``h``. No clean sample's own label moves its own prediction, so
    the clean split's calibration (:func:`mslc.metrics.clean_split_calibration`) measures
    recalibrated predictions as the training samples get them. (One table fitted on the whole
    clean split and measured on it too makes the cells where that split saw no confident
    mistake near certain, where the training samples' mistakes are not: on Fashion-MNIST,
    instance-40 seed 3 of ``benchmarks/review_budget.py``, the flags' precision was
    estimated 1.6–3.0 points high; this way, within 1.1 points from the 0.7 cut up, but
    cautious in other runs, so the review budget's bound reads the lower of the two.)

    Parameters
    ----------
    train_probs : (N, C); clean_probs : (B·n, C) ``blocks`` models' predictions of the same
    n clean samples, one block per model; clean_labels : (B·n,) int64;
    parts : at least 2; seed : which samples go in which part.

    Returns
    -------
    ``(train (N, C), clean (B·n, C))`` recalibrated, rows sum to 1.
    """
    p, pc = np.asarray(train_probs, dtype=np.float64), np.asarray(clean_probs, dtype=np.float64)
    y = np.asarray(clean_labels, dtype=np.int64)
    if parts < 2:
        raise ValueError(f"crossfit_recalibration needs at least 2 parts, got {parts}")
    if blocks < 1 or len(y) % blocks or len(pc) != len(y):
        raise ValueError(
            f"crossfit_recalibration: {len(pc)} clean predictions and {len(y)} labels are not {blocks} equal blocks"
        )
    rng = np.random.default_rng(seed)
    part_clean = np.tile(rng.permutation(len(y) // blocks) % parts, blocks)
    part_train = rng.permutation(len(p)) % parts
    out, out_clean = p.copy(), pc.copy()
    for h in range(parts):
        table = binned_recalibration(pc[part_clean != h], y[part_clean != h])
        out[part_train == h] = recalibrate(p[part_train == h], table)
        out_clean[part_clean == h] = recalibrate(pc[part_clean == h], table)
    return out, out_clean


FLIP_CONCENTRATION = (
    0.5  # the transition's concentration (mslc.corrector.transition_concentration) from which noise is class flips
)
SUPPORT_Z = (
    1.645  # one-sided 95%: a flip is kept where the given labels show more of it than the models' own upper bound
)


def crossfit_targets(y_tilde: np.ndarray, transition: np.ndarray) -> np.ndarray:
    """What the cross-fitted models learn: where the noise ``transition`` is spread over many
    classes (its concentration below :data:`FLIP_CONCENTRATION`: symmetric or instance noise)
    the soft corrected labels ``y_tilde`` themselves, where it is a few class flips their
    arg-max. ỹ keeps some of a flipped sample's mass on its given label, and
    :func:`fit_transition` counts the given label's evidence again: under class flips that made
    the estimate 2–8 points low. Under spread noise the arg-max throws away the doubt a soft row
    carries between two classes, and the held-out models then put too little on the second one
    (the estimate 3–5 points low at 0.5–0.7; both measured on Fashion-MNIST,
    ``benchmarks/review_budget.py``).

    Parameters
    ----------
    y_tilde : (N, C) float, rows sum to 1; transition : (C, C) ``T[true, given]``.

    Returns
    -------
    (N, C) float32 soft targets, or (N,) int64 labels.
    """
    from mslc.corrector import transition_concentration

    y = np.asarray(y_tilde)
    t = np.asarray(transition, dtype=np.float64)
    if y.ndim != 2 or t.shape != (y.shape[1], y.shape[1]):
        raise ValueError(f"crossfit_targets: y_tilde {y.shape} and transition {t.shape} do not agree")
    if transition_concentration(t) < FLIP_CONCENTRATION:
        return y.astype(np.float32)
    return y.argmax(1).astype(np.int64)


def supported_flips(
    probs: np.ndarray,
    given: np.ndarray,
    clean_probs: np.ndarray,
    clean_labels: np.ndarray,
    *,
    blocks: int = 1,
    z: float = SUPPORT_Z,
) -> np.ndarray:
    """Which cells ``T[c, g]`` of the noise transition the given labels support: a flip
    ``c → g`` is kept where the share of samples given ``g`` that the held-out models predict
    as ``c`` exceeds the one-sided upper bound of how often those models mistake a clean
    sample of class ``g`` for ``c`` (measured on the clean split). A model's own confident
    mistakes otherwise pass for noise: fitted to the given labels they put small spurious
    entries in ``T`` (0.5–2% on Fashion-MNIST's class flips) that make flags onto classes the
    noise never reaches look right.

    Parameters
    ----------
    probs : (N, C) held-out predictions of the training samples; given : (N,) int64 their
    given labels; clean_probs : (blocks·n, C) the same models' predictions on the clean
    split, one block per model; clean_labels : (blocks·n,) int64; blocks : how many models
    predicted the same clean samples (the bound's sample size is a block's); z : the bound's
    normal quantile.

    Returns
    -------
    (C, C) bool ``[true, given]``: True on the diagonal, and where a class has no clean
    sample or no sample is given it (nothing to test against).
    """
    p, y = np.asarray(probs), np.asarray(given, dtype=np.int64)
    pc, yc = np.asarray(clean_probs), np.asarray(clean_labels, dtype=np.int64)
    if p.ndim != 2 or y.shape != (p.shape[0],) or pc.shape[1:] != p.shape[1:] or yc.shape != (pc.shape[0],):
        raise ValueError(
            f"supported_flips: probs {p.shape}, given {y.shape}, clean_probs {pc.shape} and "
            f"clean_labels {yc.shape} do not agree"
        )
    c = p.shape[1]
    seen = np.zeros((c, c))
    np.add.at(seen, (p.argmax(1), y), 1.0)  # [predicted, given]
    n_given = seen.sum(0)
    mistaken = np.zeros((c, c))
    np.add.at(mistaken, (yc, pc.argmax(1)), 1.0)  # [clean class, predicted]
    n_clean = mistaken.sum(1, keepdims=True) / max(blocks, 1)
    rate = (mistaken / max(blocks, 1) + 1.0) / (n_clean + 2.0)  # a block's rate, one success and one failure added
    upper = rate + z * np.sqrt(rate * (1.0 - rate) / np.maximum(n_clean, 1.0))
    share = seen / np.maximum(n_given, 1.0)
    keep = (share > upper.T) | (n_given == 0)[None, :] | (n_clean[:, 0] == 0)[None, :]
    np.fill_diagonal(keep, True)
    return keep


def heldout_posterior(
    train_probs: np.ndarray,
    clean_probs: np.ndarray,
    clean_labels: np.ndarray,
    given: np.ndarray,
    transition: np.ndarray,
    *,
    folds: int = 1,
    out_of_sample: bool = False,
    seed: int = 0,
) -> dict:
    """Each training sample's probability of every class being its true one, from held-out
    predictions and its given label, and what calibrates it on the clean split; no true
    training label.

    1. Where the noise ``transition`` estimated on trusted data is spread over many classes
       (its concentration below :data:`FLIP_CONCENTRATION`: symmetric or instance noise), the
       held-out predictions are moved to the clean split's frequencies
       (:func:`binned_recalibration`; ``out_of_sample``: :func:`crossfit_recalibration`, parts
       dealt by ``seed``): models trained on soft corrected labels put too much on the classes
       the noise spread to. The one table fitted on the whole split, also measured on it in
       step 3, flatters the estimate where the split saw no confident mistake; out of sample
       it does not, but on Fashion-MNIST it is 1–3 points cautious at symmetric noise and up
       to 11 below 0.8 at instance noise (``benchmarks/review_budget.py``): step 3 simulates
       every flag the posterior makes, while a run's flags are ỹ's, which at the same
       posterior are more often right. The run publishes the first and bounds by the lower
       of the two. Where it is a few class flips they are kept: the clean
       split is too small to measure the rare confident confusions between the flipped pairs,
       and a recalibration that cannot see them shrinks them (measured on Fashion-MNIST,
       ``benchmarks/review_budget.py``). There the flips the given labels do not
       support beyond the models' own mistakes are removed from ``transition`` instead
       (:func:`supported_flips`).
    2. The transition refitted to the given labels under those predictions (:func:`fit_transition`,
       started from ``transition``; a removed flip stays 0).
    3. Bayes: :func:`mslc.metrics.label_posterior`; and the clean split's calibration of it,
       :func:`mslc.metrics.clean_split_calibration`, whose effective sizes ``n_eff`` are divided
       by ``folds`` (every fold's model predicted the same clean samples).

    Parameters
    ----------
    train_probs : (N, C) each training sample's prediction by the model that did not train on it;
    clean_probs : (F·n, C) the fold models' predictions on the clean split, one block per model;
    clean_labels : (F·n,) int64 its labels, repeated per block;
    given : (N,) int64 given labels; transition : (C, C) ``T[true, given]`` (GLC's, say);
    folds : F; out_of_sample, seed : step 1's recalibration (with ``seed`` dealing its parts).

    Returns
    -------
    ``{'posterior': (N, C), 'transition': (C, C) refitted, 'calibration': bins,
    'recalibrated': bool}``.
    """
    from mslc.corrector import transition_concentration
    from mslc.metrics import clean_split_calibration, label_posterior

    t0 = np.asarray(transition, dtype=np.float64)
    spread = transition_concentration(t0) < FLIP_CONCENTRATION
    p, pc = np.asarray(train_probs, dtype=np.float64), np.asarray(clean_probs, dtype=np.float64)
    if spread:
        if out_of_sample:
            p, pc = crossfit_recalibration(p, pc, clean_labels, blocks=max(folds, 1), seed=seed)
        else:
            table = binned_recalibration(pc, clean_labels)
            p, pc = recalibrate(p, table), recalibrate(pc, table)
    else:
        t0 = np.where(supported_flips(p, given, pc, clean_labels, blocks=folds), t0, 0.0)
        t0 = t0 / t0.sum(1, keepdims=True)
    t = fit_transition(p, given, t0)
    bins = clean_split_calibration(pc, clean_labels, t)
    for b in bins:
        b["n_eff"] = b["n_eff"] / max(folds, 1)
    return {"posterior": label_posterior(p, given, t), "transition": t, "calibration": bins, "recalibrated": spread}
