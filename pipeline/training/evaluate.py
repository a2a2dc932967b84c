"""Evaluation after each epoch: accuracy on the clean splits, label metrics from the bank,
and the progress line."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from mslc.bank import SoftLabelBank
from mslc.metrics import corrected_label_accuracy, group_mean
from pipeline.shardset import expected_counts, shard_urls
from pipeline.training import streaming
from pipeline.training.config import Config
from pipeline.training.state import Data, normalize


@torch.no_grad()
def evaluate(model: nn.Module, data: Data, split: str, device: torch.device, batch_size: int = 512,
             cfg_bad_samples: str = "error") -> float:
    """Accuracy of ``model`` on a clean split streamed from its shards (NaN if empty)."""
    urls = shard_urls(data.shard_dir, data.manifest, split)
    if not urls:
        return float("nan")
    model.eval()
    ds = streaming.stream(urls, num_classes=data.num_classes, shuffle_seed=None,
                          expected=expected_counts(data.shard_dir, data.manifest, split),
                          channels=data.channels, transform=data.eval_tf, bad_samples=cfg_bad_samples)
    correct = total = 0
    for x, y, _ in streaming.loader(ds, batch_size=batch_size, workers=0):
        pred = model(normalize(x, data, device)).argmax(1).cpu()
        correct += int((pred == y).sum())
        total += len(y)
    model.train()
    return correct / total if total else float("nan")


def bank_metrics(bank: SoftLabelBank, data: Data) -> tuple[dict, dict]:
    """Per-epoch label metrics from the bank, and the table they came from."""
    t = bank.table()
    out: dict = {}
    known, noisy = data.known, data.is_noisy
    if known.any():
        c = corrected_label_accuracy(t["y_tilde"][known], data.true[known], noisy[known])
        p = corrected_label_accuracy(t["y_hat"][known], data.true[known], noisy[known])
        out.update({f"corrected_{k}": v for k, v in c.items()})
        out["prediction_label_acc"] = p["all"]
        out["alpha_clean"] = group_mean(t["alpha"], known & ~noisy)
        out["alpha_noisy"] = group_mean(t["alpha"], noisy)
    out["alpha_mean"] = group_mean(t["alpha"], np.ones(len(t["alpha"]), bool))
    out["beta_mean"] = group_mean(t["beta"], np.ones(len(t["beta"]), bool))
    return out, t


def progress_line(cfg: Config, r: dict) -> str:
    def pct(v):
        return "  n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:5.2f}"

    s = (f"epoch {r['epoch']:3d}/{cfg.optim.epochs} [{r['phase']:6s}] lr {r['lr']:.2e} loss {r['train_loss']:.4f} "
         f"val {pct(r['val_acc'])}% test {pct(r['test_acc'])}%")
    if "corrected_all" in r:
        s += (f" corrected {pct(r['corrected_all'])}% (clean {pct(r['corrected_clean'])} / "
              f"noisy {pct(r['corrected_noisy'])})")
    if r["phase"] == "mslc" and "alpha_clean" in r:
        s += f" alpha clean {r['alpha_clean']:.2f} noisy {r['alpha_noisy']:.2f}"
    return s + f" {r['epoch_seconds']:.0f}s"
