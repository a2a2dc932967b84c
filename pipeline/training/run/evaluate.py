"""Evaluation after each epoch: accuracy on the clean splits, label metrics from the bank,
and the progress line."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from mslc.bank import SoftLabelBank
from mslc.metrics import corrected_label_accuracy, detection_scores, group_mean
from pipeline.shardset import expected_counts, shard_urls
from pipeline.training.data import streaming
from pipeline.training.methods.state import Data, normalize
from pipeline.training.settings.config import Config

EVAL_CACHE_BYTES = 256 * 2**20  # a clean split whose decoded images fit in this is decoded once per run


def eval_batches(data: Data, split: str, *, batch_size: int, bad_samples: str = "error"):
    """``(images uint8 (n, C, H, W), labels (n,))`` batches of a clean split, in index order.

    A split whose decoded images take at most :data:`EVAL_CACHE_BYTES` is decoded once
    and kept in ``data.eval_cache`` (Fashion-MNIST's test split: 8 MB, which streaming
    would decode again every epoch); a bigger one (Clothing1M's) streams from its shards.
    """
    count = data.manifest["splits"].get(split, {}).get("count", 0)
    if count * data.channels * data.size**2 <= EVAL_CACHE_BYTES:
        if split not in data.eval_cache:
            data.eval_cache[split] = streaming.load_split_tensors(
                data.shard_dir,
                data.manifest,
                split,
                transform=data.eval_tf,
                channels=data.channels,
                bad_samples=bad_samples,
            )
        x, y = data.eval_cache[split]
        for i in range(0, len(y), batch_size):
            yield x[i : i + batch_size], y[i : i + batch_size]
        return
    for x, y, _ in split_batches(data, split, batch_size=batch_size, bad_samples=bad_samples):
        yield x, y


def split_batches(
    data: Data,
    split: str,
    *,
    batch_size: int,
    bad_samples: str = "error",
    shuffle_seed: int | None = None,
    shuffle_buffer: int = 0,
    train: bool = False,
    workers: int = 0,
):
    """``(images uint8, labels, index)`` batches of a whole split streamed from its shards:
    in shard order with the evaluation transform, or shuffled with ``shuffle_seed`` and
    augmented (``train``). The training split's labels are the run's (``data.labels``)."""
    ds = streaming.stream(
        shard_urls(data.shard_dir, data.manifest, split),
        num_classes=data.num_classes,
        shuffle_seed=shuffle_seed,
        shuffle_buffer=shuffle_buffer if shuffle_seed is not None else 0,
        expected=expected_counts(data.shard_dir, data.manifest, split),
        channels=data.channels,
        transform=data.train_tf if train else data.eval_tf,
        bad_samples=bad_samples,
        labels=data.labels if split == "train" else None,
    )
    return streaming.loader(ds, batch_size=batch_size, workers=workers, seed=shuffle_seed or 0)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Data,
    split: str,
    device: torch.device,
    batch_size: int = 512,
    cfg_bad_samples: str = "error",
) -> float:
    """Accuracy of ``model`` on a clean split (NaN if it has no shards)."""
    if not shard_urls(data.shard_dir, data.manifest, split):
        return float("nan")
    model.eval()
    correct = torch.zeros((), dtype=torch.int64)
    total = 0
    for x, y in eval_batches(data, split, batch_size=batch_size, bad_samples=cfg_bad_samples):
        pred = model(normalize(x, data, device)).argmax(1).cpu()
        correct += (pred == y).sum()
        total += len(y)
    model.train()
    return int(correct) / total if total else float("nan")


def table_label_metrics(y_tilde: np.ndarray, data: Data) -> dict:
    """``corrected_{all,clean,noisy}`` and ``detect_{precision,recall,f1}`` of soft labels
    ``y_tilde`` (N, C) against the true labels where known ({} where none is)."""
    known, noisy = data.known, data.is_noisy
    if not known.any():
        return {}
    c = corrected_label_accuracy(y_tilde[known], data.true[known], noisy[known])
    flagged = y_tilde[known].argmax(1) != data.labels[known]
    return {
        **{f"corrected_{k}": v for k, v in c.items()},
        **{f"detect_{k}": v for k, v in detection_scores(flagged, noisy[known]).items()},
    }


def bank_metrics(bank: SoftLabelBank, data: Data) -> tuple[dict, dict]:
    """Per-epoch label metrics from the bank, and the table they came from."""
    t = bank.table()
    out = table_label_metrics(t["y_tilde"], data)
    known, noisy = data.known, data.is_noisy
    if known.any():
        p = corrected_label_accuracy(t["y_hat"][known], data.true[known], noisy[known])
        out["prediction_label_acc"] = p["all"]
        out["alpha_clean"] = group_mean(t["alpha"], known & ~noisy)
        out["alpha_noisy"] = group_mean(t["alpha"], noisy)
        out["alpha_pairs"] = alpha_by_flip(t["alpha"], data.labels, data.true)
    out["alpha_mean"] = group_mean(t["alpha"], np.ones(len(t["alpha"]), bool))
    out["beta_mean"] = group_mean(t["beta"], np.ones(len(t["beta"]), bool))
    return out, t


def alpha_by_flip(alpha: np.ndarray, given: np.ndarray, true: np.ndarray, *, top: int = 10) -> dict:
    """Mean α of the flipped samples of each of the ``top`` most frequent flips ``i->j``
    (true ``i``, given ``j``) beside that of the clean samples given ``j``: whether the
    corrector tells the two apart where it matters.

    alpha : (N,) float, NaN where unset; given, true : (N,) int64, true -1 where unknown.
    Returns ``{"i->j": {"flipped": mean α, "clean": mean α, "n": flips}}``.
    """
    known = true >= 0
    flips = known & (given != true)
    if not flips.any():
        return {}
    c = int(max(given.max(), true.max())) + 1
    counts = np.bincount(true[flips] * c + given[flips], minlength=c * c)
    out = {}
    for code in np.argsort(-counts, kind="stable")[:top]:
        if counts[code] == 0:
            break
        i, j = divmod(int(code), c)
        out[f"{i}->{j}"] = {
            "flipped": group_mean(alpha, flips & (true == i) & (given == j)),
            "clean": group_mean(alpha, known & (true == j) & (given == j)),
            "n": int(counts[code]),
        }
    return out


def progress_line(cfg: Config, r: dict) -> str:
    def pct(v):
        return "  n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:5.2f}"

    s = (
        f"epoch {r['epoch']:3d}/{cfg.optim.epochs} [{r['phase']:6s}] lr {r['lr']:.2e} loss {r['train_loss']:.4f} "
        f"val {pct(r['val_acc'])}% test {pct(r['test_acc'])}%"
    )
    if "corrected_all" in r:
        s += (
            f" corrected {pct(r['corrected_all'])}% (clean {pct(r['corrected_clean'])} / "
            f"noisy {pct(r['corrected_noisy'])})"
        )
    if "detect_f1" in r:
        s += f" detect P/R/F1 {pct(r['detect_precision'])}/{pct(r['detect_recall'])}/{pct(r['detect_f1'])}"
    if "flags" in r:
        s += f" flags {r['flags']}" + ("" if r.get("churn") is None else f" (changed {r['churn']})")
    if r["phase"] == "mslc" and "alpha_clean" in r:
        s += f" alpha clean {r['alpha_clean']:.2f} noisy {r['alpha_noisy']:.2f}"
    return s + f" {r['epoch_seconds']:.0f}s"


@torch.no_grad()
def predict(
    model: nn.Module,
    data: Data,
    split: str,
    device: torch.device,
    batch_size: int = 512,
    cfg_bad_samples: str = "error",
) -> tuple[np.ndarray, np.ndarray] | None:
    """``(probs (n, C), labels (n,))`` of ``model`` on a clean split, or None if it has no shards."""
    if not shard_urls(data.shard_dir, data.manifest, split):
        return None
    model.eval()
    probs, labels = [], []
    for x, y in eval_batches(data, split, batch_size=batch_size, bad_samples=cfg_bad_samples):
        probs.append(torch.softmax(model(normalize(x, data, device)).float(), 1).cpu())
        labels.append(y)
    model.train()
    return (torch.cat(probs).numpy(), torch.cat(labels).numpy()) if probs else None
