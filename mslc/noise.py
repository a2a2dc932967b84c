"""Label-noise models as row-stochastic transition matrices, with seeded sampling.

``T[i, j]`` is the probability that a sample of true class ``i`` is given label
``j``. Every generator returns a ``(C, C)`` float64 matrix whose rows sum to 1;
:func:`corrupt` samples noisy labels from it and reports what was realized.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NOISE_KINDS = ("none", "sym", "sym-exclusive", "pairflip", "asym", "instance")

#: CIFAR-10 semantic flips from the paper: truck→automobile, bird→airplane,
#: deer→horse, cat→dog.
CIFAR10_ASYM = {9: 1, 2: 0, 4: 7, 3: 5}

#: Fashion-MNIST semantic flips (ours, in the spirit of CIFAR-10's): each source
#: class is flipped to the class it is most often confused with by a clean model:
#: T-shirt/top→Shirt, Pullover→Coat, Sandal→Sneaker, Ankle boot→Sandal.
FMNIST_ASYM = {0: 6, 2: 4, 5: 7, 9: 5}

#: CIFAR-100's twenty super-classes, each listed as its five fine label ids.
CIFAR100_SUPERCLASSES = (
    (4, 30, 55, 72, 95),
    (1, 32, 67, 73, 91),
    (54, 62, 70, 82, 92),
    (9, 10, 16, 28, 61),
    (0, 51, 53, 57, 83),
    (22, 39, 40, 86, 87),
    (5, 20, 25, 84, 94),
    (6, 7, 14, 18, 24),
    (3, 42, 43, 88, 97),
    (12, 17, 37, 68, 76),
    (23, 33, 49, 60, 71),
    (15, 19, 21, 31, 38),
    (34, 63, 64, 66, 75),
    (26, 45, 77, 79, 99),
    (2, 11, 35, 46, 98),
    (27, 29, 44, 78, 93),
    (36, 50, 65, 74, 80),
    (47, 52, 56, 59, 96),
    (8, 13, 48, 58, 90),
    (41, 69, 81, 85, 89),
)


def _check_rate(rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise rate must be in [0, 1], got {rate}")


def symmetric(num_classes: int, rate: float) -> np.ndarray:
    """The paper's symmetric noise: a fraction ``rate`` of labels is redrawn
    uniformly over all ``C`` classes, so the true label may be kept and the
    expected wrong-label rate is ``rate * (C - 1) / C``."""
    _check_rate(rate)
    t = np.full((num_classes, num_classes), rate / num_classes)
    t[np.diag_indices(num_classes)] += 1.0 - rate
    return t


def symmetric_exclusive(num_classes: int, rate: float) -> np.ndarray:
    """Symmetric noise that never keeps the true label: wrong-label rate == ``rate``."""
    _check_rate(rate)
    if num_classes < 2:
        raise ValueError("symmetric-exclusive noise needs at least 2 classes")
    t = np.full((num_classes, num_classes), rate / (num_classes - 1))
    t[np.diag_indices(num_classes)] = 1.0 - rate
    return t


def mapped(num_classes: int, rate: float, mapping: dict[int, int]) -> np.ndarray:
    """Flip class ``i`` to ``mapping[i]`` with probability ``rate``; others stay clean."""
    _check_rate(rate)
    t = np.eye(num_classes)
    for src, dst in mapping.items():
        if not (0 <= src < num_classes and 0 <= dst < num_classes):
            raise ValueError(f"noise mapping {src}->{dst} is outside 0..{num_classes - 1}")
        if src == dst:
            continue
        t[src, src] = 1.0 - rate
        t[src, dst] = rate
    return t


def pairflip(num_classes: int, rate: float) -> np.ndarray:
    """Flip every class ``i`` to ``(i + 1) mod C`` with probability ``rate``."""
    return mapped(num_classes, rate, {i: (i + 1) % num_classes for i in range(num_classes)})


def superclass_next_map(fine_labels: np.ndarray, coarse_labels: np.ndarray) -> dict[int, int]:
    """CIFAR-100 style map: each fine class goes to the next fine class (cyclically,
    in id order) inside its own super-class.

    Parameters
    ----------
    fine_labels, coarse_labels : (N,) int
        Fine and coarse labels *of the same samples*; each fine class must belong
        to exactly one coarse class.
    """
    fine = np.asarray(fine_labels)
    coarse = np.asarray(coarse_labels)
    if fine.shape != coarse.shape:
        raise ValueError(f"fine and coarse labels differ in shape: {fine.shape} vs {coarse.shape}")
    groups: dict[int, set[int]] = {}
    owner: dict[int, int] = {}
    for f, c in zip(fine.tolist(), coarse.tolist()):
        if owner.setdefault(f, c) != c:
            raise ValueError(f"fine class {f} appears under coarse classes {owner[f]} and {c}")
        groups.setdefault(c, set()).add(f)
    out: dict[int, int] = {}
    for members in groups.values():
        ordered = sorted(members)
        for k, f in enumerate(ordered):
            out[f] = ordered[(k + 1) % len(ordered)]
    return out


def make_transition(kind: str, num_classes: int, rate: float, *, mapping: dict[int, int] | None = None) -> np.ndarray:
    """Build the ``(C, C)`` transition matrix of a named noise kind.

    ``kind`` is one of ``none``, ``sym``, ``sym-exclusive``, ``pairflip`` or
    ``asym``; ``asym`` needs ``mapping`` (source class -> target class).
    """
    if kind == "none":
        return np.eye(num_classes)
    if kind == "sym":
        return symmetric(num_classes, rate)
    if kind == "sym-exclusive":
        return symmetric_exclusive(num_classes, rate)
    if kind == "pairflip":
        return pairflip(num_classes, rate)
    if kind == "asym":
        if mapping is None:
            raise ValueError("asymmetric noise needs a class mapping")
        return mapped(num_classes, rate, mapping)
    if kind == "instance":
        raise ValueError("instance-dependent noise has no class transition matrix: use instance_dependent()")
    raise ValueError(f"unknown noise kind {kind!r}; expected one of {', '.join(NOISE_KINDS)}")


@dataclass(frozen=True)
class NoisyLabels:
    """The result of corrupting a label vector.

    Attributes
    ----------
    noisy : (N,) int64
        The given (possibly wrong) labels.
    true : (N,) int64
        The original labels.
    transition : (C, C) float64
        The matrix the labels were sampled from.
    realized : (C, C) float64
        Empirical ``P(noisy = j | true = i)``; a row of a class absent from
        ``true`` is the identity row.
    """

    noisy: np.ndarray
    true: np.ndarray
    transition: np.ndarray
    realized: np.ndarray

    @property
    def is_noisy(self) -> np.ndarray:
        """(N,) bool: the given label differs from the true one."""
        return self.noisy != self.true

    @property
    def rate(self) -> float:
        """The realized fraction of wrong labels."""
        return float(self.is_noisy.mean()) if len(self.true) else 0.0


def realized_matrix(true: np.ndarray, noisy: np.ndarray, num_classes: int) -> np.ndarray:
    """Empirical ``(C, C)`` transition matrix ``P(noisy | true)``, rows sum to 1."""
    counts = np.zeros((num_classes, num_classes))
    np.add.at(counts, (true, noisy), 1.0)
    totals = counts.sum(1, keepdims=True)
    eye = np.eye(num_classes)
    return np.where(totals > 0, counts / np.maximum(totals, 1.0), eye)


def corrupt(labels: np.ndarray, transition: np.ndarray, *, seed: int) -> NoisyLabels:
    """Sample a noisy label for every sample from row ``transition[labels[i]]``.

    Parameters
    ----------
    labels : (N,) int
        True labels in ``0..C-1``.
    transition : (C, C)
        Row-stochastic noise matrix.
    seed : int
        The same seed and inputs always give the same noisy labels.
    """
    y = np.asarray(labels, dtype=np.int64)
    t = np.asarray(transition, dtype=np.float64)
    c = t.shape[0]
    if t.ndim != 2 or t.shape != (c, c):
        raise ValueError(f"transition must be square, got shape {t.shape}")
    if (t < 0).any() or not np.allclose(t.sum(1), 1.0):
        raise ValueError("transition rows must be non-negative and sum to 1")
    if y.size and (y.min() < 0 or y.max() >= c):
        bad = int(np.flatnonzero((y < 0) | (y >= c))[0])
        raise ValueError(f"label {int(y[bad])} of sample {bad} is outside 0..{c - 1}")
    rng = np.random.default_rng(seed)
    u = rng.random(y.shape[0])
    cdf = np.cumsum(t, axis=1)
    cdf[:, -1] = 1.0
    noisy = (u[:, None] >= cdf[y]).sum(1).astype(np.int64)
    return NoisyLabels(noisy=noisy, true=y, transition=t, realized=realized_matrix(y, noisy, c))


def truncated_normal(
    n: int, mean: float, std: float, *, rng: np.random.Generator, low: float = 0.0, high: float = 1.0
) -> np.ndarray:
    """(n,) draws of N(mean, std²) truncated to [low, high] (by rejection)."""
    out = rng.normal(mean, std, n)
    bad = (out < low) | (out > high)
    while bad.any():
        out[bad] = rng.normal(mean, std, int(bad.sum()))
        bad = (out < low) | (out > high)
    return out


def instance_dependent(
    features: np.ndarray, labels: np.ndarray, num_classes: int, rate: float, *, seed: int, norm_std: float = 0.1
) -> NoisyLabels:
    """Part-/instance-dependent noise (Xia et al., NeurIPS 2020, their generator).

    Each sample gets a flip rate ``q_i`` ~ N(rate, norm_std²) truncated to [0, 1]; each
    true class ``y`` a random projection ``W_y`` (d, C) ~ N(0, 1). Sample ``i`` keeps its
    label with probability ``1 − q_i`` and otherwise takes class ``c ≠ y`` with
    probability ``q_i · softmax_{c ≠ y}(x_i W_y)``: which wrong label a sample gets
    depends on its own features. The expected wrong-label rate is about ``rate``.

    Parameters
    ----------
    features : (N, d) float
        Per-sample features (the generator's: standardized pixels, flattened).
    labels : (N,) int
        True labels in ``0..C-1``.
    num_classes : int
    rate : float in [0, 1]
    seed : int
        The same seed and inputs always give the same noisy labels.

    Returns
    -------
    :class:`NoisyLabels` whose ``transition`` is the mean per-sample flip distribution of
    each true class (C, C) (the identity row for an absent class).
    """
    _check_rate(rate)
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels, dtype=np.int64)
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"features must be (N, d) for N = {y.shape[0]} labels, got shape {x.shape}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        bad = int(np.flatnonzero((y < 0) | (y >= num_classes))[0])
        raise ValueError(f"label {int(y[bad])} of sample {bad} is outside 0..{num_classes - 1}")
    if num_classes < 2:
        raise ValueError("instance-dependent noise needs at least 2 classes")
    rng = np.random.default_rng(seed)
    q = truncated_normal(len(y), rate, norm_std, rng=rng)
    probs, mean = np.zeros((len(y), num_classes)), np.eye(num_classes)
    for c in range(num_classes):
        rows = np.flatnonzero(y == c)
        w = rng.standard_normal((x.shape[1], num_classes)).astype(np.float32)
        if not rows.size:
            continue
        a = (x[rows] @ w).astype(np.float64)
        a[:, c] = -np.inf
        a = np.exp(a - a.max(1, keepdims=True))
        probs[rows] = q[rows, None] * a / a.sum(1, keepdims=True)
        probs[rows, c] = 1.0 - q[rows]
        mean[c] = probs[rows].mean(0)
    u = rng.random(len(y))
    cdf = np.cumsum(probs, 1)
    cdf[:, -1] = 1.0
    noisy = (u[:, None] >= cdf).sum(1).astype(np.int64)
    return NoisyLabels(noisy=noisy, true=y, transition=mean, realized=realized_matrix(y, noisy, num_classes))
