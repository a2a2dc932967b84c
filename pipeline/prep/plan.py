"""The split and noise plan: clean meta and validation sets drawn first, then the training
split subsampled, corrupted with synthetic noise, and relabelled from ``--labels``."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from mslc.noise import (
    CIFAR10_ASYM,
    FMNIST_ASYM,
    NoisyLabels,
    corrupt,
    instance_dependent,
    make_transition,
    realized_matrix,
    superclass_next_map,
)
from mslc.splits import balanced_split
from pipeline.errors import PipelineError
from pipeline.prep.readers import Items, Source, empty_items
from pipeline.shardset.spec import PrepareOptions
from pipeline.storage import sha256_file


@dataclass
class Plan:
    """The four splits as they will be written, and what the manifest says of them."""

    splits: dict[str, Items]
    classes: tuple[str, ...]
    image: dict
    noise: dict
    info: dict


def subsample(idx: np.ndarray, n: int, seed: int) -> np.ndarray:
    if not n or n >= len(idx):
        return idx
    return np.sort(np.random.default_rng(seed).choice(idx, size=n, replace=False))


def noise_mapping(data: PrepareOptions, coarse: np.ndarray | None, pool: Items) -> dict[int, int] | None:
    if data.noise != "asym":
        return None
    if data.dataset == "cifar100":
        return superclass_next_map(pool.true, coarse)
    maps = {"fashion-mnist": FMNIST_ASYM, "cifar10": CIFAR10_ASYM}
    if data.dataset in maps:
        return maps[data.dataset]
    raise PipelineError(f"no asymmetric noise map for dataset {data.dataset!r}")


def instance_features(images: np.ndarray) -> np.ndarray:
    """(n, H, W[, 3]) uint8 → (n, d) float32: pixels in [0, 1], standardized per channel
    over the split, flattened (the features Xia et al.'s generator projects)."""
    x = images.astype(np.float32).reshape(len(images), -1, images.shape[-1] if images.ndim == 4 else 1) / 255.0
    x = (x - x.mean((0, 1))) / np.maximum(x.std((0, 1)), 1e-6)
    return x.reshape(len(images), -1)


def synthetic_noise(
    data: PrepareOptions, train: Items, num_classes: int, mapping: dict[int, int] | None
) -> NoisyLabels:
    """Corrupt the training split's true labels with ``data.noise`` at ``data.noise_rate``."""
    if data.noise == "instance":
        if train.images is None:
            raise PipelineError(
                f"{data.dataset}: instance-dependent noise needs the images in memory "
                "(fashion-mnist, cifar10 or cifar100)"
            )
        return instance_dependent(
            instance_features(train.images), train.true, num_classes, data.noise_rate, seed=data.noise_seed
        )
    transition = make_transition(data.noise, num_classes, data.noise_rate, mapping=mapping)
    return corrupt(train.true, transition, seed=data.noise_seed)


def balanced(labels: np.ndarray, *, n_meta: int, n_val: int, seed: int, what: str):
    try:
        return balanced_split(labels, n_meta=n_meta, n_val=n_val, seed=seed)
    except ValueError as e:
        raise PipelineError(f"{what}: cannot draw {n_meta} meta and {n_val} validation samples ({e})") from None


def draw_clean_splits(data: PrepareOptions, src: Source) -> tuple[Items, Items, Items]:
    """(train pool, meta, val): meta and val are class-balanced and disjoint from train."""
    s = data.split_seed
    if src.clean is None:  # drawn from the pool by its true (else given) labels
        ref = src.pool.true if (src.pool.true >= 0).all() else src.pool.labels
        sp = balanced(
            ref, n_meta=data.n_meta, n_val=0 if src.val is not None else data.n_val, seed=s, what="training pool"
        )
        meta, val = src.pool.take(sp.meta), src.pool.take(sp.val) if src.val is None else src.val
        pool = src.pool.take(sp.train)
    else:
        given_val = src.val is not None
        if given_val and data.n_meta >= len(src.clean):  # all of it
            meta = src.clean
        else:
            sp = balanced(
                src.clean.labels, n_meta=data.n_meta, n_val=0 if given_val else data.n_val, seed=s, what="clean pool"
            )
            meta = src.clean.take(sp.meta)
        val = (
            src.val.take(subsample(np.arange(len(src.val)), data.n_val, s + 3)) if given_val else src.clean.take(sp.val)
        )
        pool = src.pool
    return pool, meta, val


def plan_splits(data: PrepareOptions, src: Source, coarse: np.ndarray | None, override: tuple | None) -> Plan:
    """Split, corrupt (synthetic noise) and relabel (``--labels``) a source."""
    c = len(src.classes)
    pool, meta, val = draw_clean_splits(data, src)
    test = src.test if src.test is not None else empty_items()
    test = test.take(subsample(np.arange(len(test)), data.max_test, data.split_seed + 2))
    held = set(meta.keys) | set(val.keys) | set(test.keys) if src.clean is not None else set()
    in_pool = [i for i, k in enumerate(pool.keys) if k not in held]
    removed = len(pool) - len(in_pool)
    train = pool.take(subsample(np.asarray(in_pool, np.int64), data.max_train, data.split_seed + 1))
    noise: dict = {
        "kind": data.noise,
        "rate": data.noise_rate,
        "seed": data.noise_seed,
        "mapping": {},
        "transition": None,
    }
    if data.noise != "none":
        if src.real_noise:
            raise PipelineError(
                f"{data.dataset}: its labels are noisy as given; synthetic noise needs "
                "data.noise=none (or --noise none)"
            )
        mapping = noise_mapping(data, coarse, src.pool)
        noisy = synthetic_noise(data, train, c, mapping)
        train = replace(train, labels=noisy.noisy)
        noise.update(mapping={str(k): v for k, v in (mapping or {}).items()}, transition=noisy.transition.tolist())
    info = {"removed_from_train": removed, "meta_is_clean": src.clean_is_clean}
    if override is not None:
        train, info["labels_file"] = apply_override(train, *override)
    known = train.true >= 0
    noise["known_true_labels"] = int(known.sum())
    noise["realized_rate"] = float((train.labels[known] != train.true[known]).mean()) if known.any() else None
    noise["realized_transition"] = realized_matrix(train.true[known], train.labels[known], c).round(6).tolist()
    return Plan({"train": train, "meta": meta, "val": val, "test": test}, src.classes, src.image, noise, info)


def apply_override(train: Items, path: str, column: str, labels: dict) -> tuple[Items, dict]:
    """Replace the given labels of the training samples the file lists."""
    ids = train.keys if column == "key" else train.source_index.tolist()
    new = train.labels.copy()
    hit = 0
    for i, k in enumerate(ids):
        if k in labels:
            new[i] = labels[k]
            hit += 1
    if hit == 0:
        raise PipelineError(f"{path}: none of its {len(labels)} rows matches a training sample by {column}")
    record = {
        "path": path,
        "sha256": sha256_file(path),
        "by": column,
        "rows": len(labels),
        "applied": hit,
        "not_in_training_split": len(labels) - hit,
    }
    return replace(train, labels=new), record
