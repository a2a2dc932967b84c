"""Held-out predictions for every training sample (``run.crossfit_folds``), so that a flag's
estimated precision is not read from a model that trained on it.

After the run exported its labels, rank 0 alone splits the training samples into K folds
(:func:`mslc.estimate.crossfit_folds`, seeded by ``run.seed``) and trains K fresh models of
the run's architecture: model k on every sample outside fold k, with
:func:`mslc.estimate.crossfit_targets` as its targets (the soft ỹ where the noise is spread,
its arg-max where it is a few class flips), for ``run.crossfit_epochs`` passes (SGD with the
run's learning rate, momentum and weight decay on a one-cycle schedule; each pass streams the
training shards once and splits each batch between the models). Model k then predicts the samples of fold k and the clean
validation split. :func:`mslc.estimate.heldout_posterior` turns that into each flag's
probability of being right. Cost: about ``crossfit_epochs · (K − 1)`` plain epochs over the
training set, at the end of the run (no checkpoint inside it: a run that fails there redoes it).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mslc.estimate import crossfit_folds
from pipeline.shardset import shard_urls
from pipeline.training.methods.state import Data, build_bare_model, normalize
from pipeline.training.run.evaluate import eval_batches, split_batches
from pipeline.training.settings.config import Config
from pipeline.weights import load_into, weights_source


@dataclass
class Heldout:
    """train : (N, C) each training sample's prediction by the model that did not train on it
    (NaN rows: never streamed, e.g. skipped as unreadable); clean : (K·n, C) the K models'
    predictions on the clean validation split, one block per model; clean_labels : (K·n,)."""

    train: np.ndarray
    clean: np.ndarray
    clean_labels: np.ndarray
    folds: int


def build_fold_models(cfg: Config, data: Data, device: torch.device) -> list[torch.nn.Module]:
    """K fresh models of the run's architecture (its pretrained weights where it has them), seeded apart from the run's."""
    models = []
    for k in range(cfg.run.crossfit_folds):
        torch.manual_seed(cfg.run.seed * 1000 + 17 + k)
        m = build_bare_model(cfg, num_classes=data.num_classes, channels=data.channels, size=data.size)
        if weights_source(cfg.model):
            load_into(m, weights_source(cfg.model))
        models.append(m.to(device).to(memory_format=data.memory_format))
    return models


def train_batches(cfg: Config, data: Data, batch_size: int, *, seed: int | None, train: bool):
    """``(images uint8, labels, index)`` batches of the whole training split: shuffled with
    ``seed`` and augmented (``train``), or in shard order with the evaluation transform."""
    return split_batches(
        data,
        "train",
        batch_size=batch_size,
        bad_samples=cfg.data.bad_samples,
        shuffle_seed=seed,
        shuffle_buffer=cfg.data.shuffle_buffer,
        train=train,
        workers=cfg.data.loader_workers,
    )


def fit_fold_models(
    cfg: Config, data: Data, models: list[torch.nn.Module], folds: torch.Tensor, targets: torch.Tensor, device
) -> None:
    """Train model k on the samples outside fold k (``folds`` (N,) int64; ``targets`` (N,) int64
    labels or (N, C) float soft labels: cross-entropy against either)."""
    k_folds, o = len(models), cfg.optim
    batch = o.batch_size * k_folds // (k_folds - 1)  # each model's share of a batch is about optim.batch_size
    steps = cfg.run.crossfit_epochs * math.ceil(len(folds) / batch)
    opts = [torch.optim.SGD(m.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay) for m in models]
    scheds = [
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=o.lr, total_steps=steps + 1, pct_start=0.15) for opt in opts
    ]
    for m in models:
        m.train()
    for epoch in range(cfg.run.crossfit_epochs):
        for x, _, idx in train_batches(cfg, data, batch, seed=cfg.run.seed * 1000 + 500 + epoch, train=True):
            x, f, tgt = normalize(x, data, device), folds[idx], targets[idx].to(device)
            for k, (m, opt, sched) in enumerate(zip(models, opts, scheds)):
                sel = f != k  # on the CPU: counting it does not wait on the device
                if int(sel.sum()) < 2:  # batch norm cannot train on one sample (a last batch's share)
                    continue
                sel = sel.to(device, non_blocking=True)
                loss = F.cross_entropy(m(x[sel]), tgt[sel])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()


@torch.no_grad()
def predict_folds(
    cfg: Config, data: Data, models: list[torch.nn.Module], folds: torch.Tensor, device
) -> Heldout | None:
    """Each training sample predicted by its fold's model; the clean validation split by every
    model. None without a validation split (nothing to calibrate on)."""
    for m in models:
        m.eval()
    held = np.full((len(folds), data.num_classes), np.nan)
    for x, _, idx in train_batches(cfg, data, 512, seed=None, train=False):
        x, f = normalize(x, data, device), folds[idx]
        for k, m in enumerate(models):
            sel = f == k
            if sel.any():
                held[idx[sel].numpy()] = F.softmax(m(x[sel.to(device)]).float(), 1).cpu().numpy()
    clean, labels = [], []
    for m in models:
        for x, y in eval_batches(data, "val", batch_size=512, bad_samples=cfg.data.bad_samples):
            clean.append(F.softmax(m(normalize(x, data, device)).float(), 1).cpu().numpy())
            labels.append(y.numpy())
    if not clean:
        return None
    return Heldout(held, np.concatenate(clean), np.concatenate(labels), len(models))


def heldout_predictions(cfg: Config, data: Data, targets: np.ndarray, device: torch.device, *, log) -> Heldout | None:
    """Cross-fit ``run.crossfit_folds`` models on ``targets`` ((N,) integer labels or (N, C)
    float soft labels, :func:`mslc.estimate.crossfit_targets`) and return their held-out
    predictions (:class:`Heldout`), or None without a validation split."""
    targets = np.asarray(targets)
    hard = targets.ndim == 1 and np.issubdtype(targets.dtype, np.integer)
    soft = targets.ndim == 2 and targets.shape[1] == data.num_classes and np.issubdtype(targets.dtype, np.floating)
    if not (hard or soft):
        raise ValueError(
            f"cross-fitting wants (N,) integer labels or (N, {data.num_classes}) float soft labels as targets, "
            f"got {targets.shape} {targets.dtype}"
        )
    if not shard_urls(data.shard_dir, data.manifest, "val"):
        log("cross-fitting skipped: the shards have no validation split to calibrate on")
        return None
    t0, k = time.time(), cfg.run.crossfit_folds
    log(
        f"cross-fitting: {k} models × {cfg.run.crossfit_epochs} passes over {len(targets):,} samples "
        "(held-out predictions for each flag's estimated precision)"
    )
    folds = torch.from_numpy(crossfit_folds(len(targets), k, seed=cfg.run.seed))
    models = build_fold_models(cfg, data, device)
    fit_fold_models(
        cfg, data, models, folds, torch.from_numpy(targets.astype(np.int64 if hard else np.float32)), device
    )
    out = predict_folds(cfg, data, models, folds, device)
    log(f"cross-fitting done in {time.time() - t0:.0f} s")
    return out
