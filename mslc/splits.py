"""The clean meta split and the clean validation split, drawn before noise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Split:
    """Disjoint sample indices into the original training set.

    Attributes
    ----------
    train : (N,) int64
        Samples that get noisy labels and are trained on.
    meta : (M,) int64
        Clean samples the corrector is meta-learned on.
    val : (V,) int64
        Clean samples for model selection (never the test set).
    """

    train: np.ndarray
    meta: np.ndarray
    val: np.ndarray


def _per_class(total: int, num_classes: int) -> np.ndarray:
    base = np.full(num_classes, total // num_classes)
    base[: total % num_classes] += 1
    return base


def balanced_split(labels: np.ndarray, *, n_meta: int, n_val: int, seed: int) -> Split:
    """Draw a class-balanced clean meta set and validation set, disjoint from
    each other and from the returned training indices.

    Parameters
    ----------
    labels : (N_total,) int
        The *true* labels, before any noise is applied.
    n_meta, n_val : int
        Sizes; each is spread over classes as evenly as possible.
    seed : int
        One seeded permutation decides everything (unlike the authors' code,
        whose two unseeded shuffles put most meta images in the training set).
    """
    y = np.asarray(labels, dtype=np.int64)
    if n_meta < 0 or n_val < 0:
        raise ValueError("n_meta and n_val must be >= 0")
    classes = np.unique(y)
    rng = np.random.default_rng(seed)
    want_meta = _per_class(n_meta, len(classes))
    want_val = _per_class(n_val, len(classes))
    meta, val = [], []
    for k, c in enumerate(classes):
        idx = rng.permutation(np.flatnonzero(y == c))
        if want_meta[k] + want_val[k] > len(idx):
            raise ValueError(
                f"class {c} has {len(idx)} samples, fewer than the "
                f"{want_meta[k] + want_val[k]} its meta and validation shares need"
            )
        meta.append(idx[: want_meta[k]])
        val.append(idx[want_meta[k] : want_meta[k] + want_val[k]])
    meta_idx = np.sort(np.concatenate(meta)) if meta else np.zeros(0, np.int64)
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    held = np.zeros(len(y), dtype=bool)
    held[meta_idx] = True
    held[val_idx] = True
    return Split(train=np.flatnonzero(~held), meta=meta_idx, val=val_idx)
