"""The methods MSLC is compared with in the paper, as pure functions and thin steps.

* GCE (Zhang & Sabuncu, 2018): :func:`gce_loss`.
* Bootstrap soft / hard (Reed et al., 2015): :func:`bootstrap_target`.
* GLC (Hendrycks et al., 2018): :func:`glc_estimate` (the corruption matrix from the
  clean set) and :func:`glc_loss` (the corrected loss on noisy samples).
* Joint Optimization (Tanaka et al., 2018): :func:`joint_opt_loss` and labels
  replaced by the mean prediction of the last epoch (the bank does that).
* U-correction without mixup (Arazo et al., 2019): :class:`BetaMixture` fitted on
  per-sample losses, :func:`dynamic_bootstrap_target`.
* MW-Net (Shu et al., 2019): :func:`mwnet_step`, a weight net on per-sample losses
  meta-learned through one virtual step, as MSLC's corrector is.
* Fine-tuning: CE, then CE on the clean meta set (a schedule, in the pipeline).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mslc import dist
from mslc.corrector import LossMLP
from mslc.meta_step import StepResult, meta_loss_at, real_step, trainable_params
from mslc.precision import FP32, Amp

_EPS = 1e-12


# ------------------------------------------------------------------ losses and targets


def gce_loss(logits: torch.Tensor, y: torch.Tensor, q: float = 0.7) -> torch.Tensor:
    """Generalized cross-entropy ``mean (1 − p_y^q) / q`` (q → 0: CE; q = 1: MAE).

    logits : (n, C); y : (n,) int64 given labels; q in (0, 1].
    """
    if not 0.0 < q <= 1.0:
        raise ValueError(f"GCE q must be in (0, 1], got {q}")
    p_y = F.softmax(logits, dim=1).gather(1, y.view(-1, 1)).squeeze(1).clamp_min(_EPS)
    return ((1.0 - p_y**q) / q).mean()


def bootstrap_target(y: torch.Tensor, probs: torch.Tensor, beta: float, *, hard: bool) -> torch.Tensor:
    """Reed et al.'s target ``β·onehot(y) + (1 − β)·z``, z = the prediction (soft) or its
    one-hot arg-max (hard); (n,), (n, C) → (n, C) rows sum to 1. The paper's β: 0.95 soft, 0.8 hard."""
    p = probs.detach()
    z = F.one_hot(p.argmax(1), p.shape[1]).to(p.dtype) if hard else p
    return beta * F.one_hot(y, p.shape[1]).to(p.dtype) + (1.0 - beta) * z


def glc_estimate(probs: torch.Tensor | np.ndarray, y_clean: torch.Tensor | np.ndarray, num_classes: int) -> np.ndarray:
    """GLC's corruption matrix ``Ĉ[i, j] = mean over clean samples of class i of p̂(ỹ = j | x)``.

    probs : (m, C) predictions of a model trained on the *noisy* labels, on the clean set;
    y_clean : (m,) their true labels. A class absent from the clean set gets the identity row.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_clean, dtype=np.int64)
    c_hat = np.eye(num_classes)
    for i in range(num_classes):
        rows = p[y == i]
        if len(rows):
            c_hat[i] = rows.mean(0)
    return c_hat / c_hat.sum(1, keepdims=True)


def glc_loss(logits: torch.Tensor, y: torch.Tensor, c_hat: torch.Tensor) -> torch.Tensor:
    """GLC's loss on noisy samples: ``−log (softmax(logits) @ Ĉ)[y]``, mean over the batch."""
    noisy_probs = F.softmax(logits, dim=1) @ c_hat.to(logits.dtype)
    return F.nll_loss(noisy_probs.clamp_min(_EPS).log(), y)


def joint_opt_loss(
    logits: torch.Tensor, target: torch.Tensor, prior: torch.Tensor, *, alpha: float = 1.2, beta: float = 0.8
) -> torch.Tensor:
    """Tanaka et al.'s ``L_c + α·L_p + β·L_e``: soft cross-entropy to the optimized labels,
    KL of the class prior to the batch's mean prediction, and the mean entropy of predictions.

    target : (n, C) current soft labels; prior : (C,) class prior (uniform for balanced data).
    """
    log_p = F.log_softmax(logits, dim=1)
    p = log_p.exp()
    l_c = -(target * log_p).sum(1).mean()
    mean_p = p.mean(0).clamp_min(_EPS)
    l_p = (prior * (prior.clamp_min(_EPS).log() - mean_p.log())).sum()
    l_e = -(p * log_p).sum(1).mean()
    return l_c + alpha * l_p + beta * l_e


def dynamic_bootstrap_target(
    y: torch.Tensor, probs: torch.Tensor, w_noisy: torch.Tensor, *, hard: bool = True
) -> torch.Tensor:
    """U-correction's target ``(1 − w)·onehot(y) + w·z`` with w the posterior of being
    noisy and z the (arg-max of the) prediction; (n,), (n, C), (n,) → (n, C)."""
    p = probs.detach()
    z = F.one_hot(p.argmax(1), p.shape[1]).to(p.dtype) if hard else p
    w = w_noisy.detach().to(p.dtype).reshape(-1, 1)
    return (1.0 - w) * F.one_hot(y, p.shape[1]).to(p.dtype) + w * z


# ------------------------------------------------------------------ two-component beta mixture


class BetaMixture:
    """A two-component beta mixture on losses scaled to [0, 1] (Arazo et al., 2019), fitted
    by EM with weighted method-of-moments M-steps. Component 1 (the larger mean) is "noisy"."""

    def __init__(self, iters: int = 10, eps: float = 1e-4) -> None:
        self.iters, self.eps = iters, eps
        self.alphas = np.array([1.0, 2.0])
        self.betas = np.array([2.0, 1.0])
        self.weight = np.array([0.5, 0.5])

    @staticmethod
    def scale(losses: np.ndarray) -> np.ndarray:
        """Losses → [eps, 1 − eps], outliers above the 95th percentile clipped (as the authors do)."""
        x = np.asarray(losses, dtype=np.float64)
        hi = np.percentile(x, 95)
        lo = x.min()
        x = (np.minimum(x, hi) - lo) / max(hi - lo, 1e-12)
        return np.clip(x, 1e-4, 1 - 1e-4)

    def _pdf(self, x: np.ndarray) -> np.ndarray:
        from math import lgamma

        out = np.empty((2, len(x)))
        for k in range(2):
            a, b = self.alphas[k], self.betas[k]
            log_b = lgamma(a) + lgamma(b) - lgamma(a + b)
            out[k] = np.exp((a - 1) * np.log(x) + (b - 1) * np.log1p(-x) - log_b)
        return out

    def _responsibilities(self, x: np.ndarray) -> np.ndarray:
        lik = self.weight[:, None] * self._pdf(x) + 1e-300
        return lik / lik.sum(0, keepdims=True)

    def fit(self, x: np.ndarray) -> BetaMixture:
        """Fit to values ``x`` (n,) in (0, 1) (use :meth:`scale` on raw losses)."""
        x = np.clip(np.asarray(x, dtype=np.float64), self.eps, 1 - self.eps)
        r = np.stack([x < np.median(x), x >= np.median(x)]).astype(np.float64)  # start: split at the median
        for _ in range(self.iters):
            for k in range(2):
                w = r[k] + 1e-12
                mean = (w * x).sum() / w.sum()
                var = max((w * (x - mean) ** 2).sum() / w.sum(), 1e-6)
                common = mean * (1 - mean) / var - 1
                self.alphas[k] = max(mean * common, 1e-2)
                self.betas[k] = max((1 - mean) * common, 1e-2)
            self.weight = r.sum(1) / r.sum()
            r = self._responsibilities(x)
        if self.alphas[0] / (self.alphas[0] + self.betas[0]) > self.alphas[1] / (self.alphas[1] + self.betas[1]):
            self.alphas, self.betas, self.weight = self.alphas[::-1].copy(), self.betas[::-1].copy(), self.weight[::-1]
        return self

    def posterior_noisy(self, x: np.ndarray) -> np.ndarray:
        """(n,) probability that each value comes from the high-loss (noisy) component."""
        x = np.clip(np.asarray(x, dtype=np.float64), self.eps, 1 - self.eps)
        return self._responsibilities(x)[1]


# ------------------------------------------------------------------ MW-Net


def mwnet_weights(vnet: LossMLP, losses: torch.Tensor) -> torch.Tensor:
    """MW-Net's per-sample weights ``V(ℓ_i) / Σ_j V(ℓ_j)`` × n (mean 1; all-zero stays zero,
    with no read of the sum on the host)."""
    v = vnet(losses.detach())
    return v * len(v) / v.sum().clamp_min(1e-12)


def mwnet_step(
    model: nn.Module,
    vnet: LossMLP,
    x: torch.Tensor,
    y: torch.Tensor,
    x_meta: torch.Tensor,
    y_meta: torch.Tensor,
    *,
    opt_w: torch.optim.Optimizer,
    opt_v: torch.optim.Optimizer,
    lr_virtual: float,
    sync_grads: Callable[[nn.Module], None] | None = None,
    amp: Amp = FP32,
) -> StepResult:
    """One MW-Net step: a virtual step on the V-weighted loss, the meta loss at the
    look-ahead weights, a step on V's parameters, then the real weighted step
    (``amp``: the precision of the model's passes, as in :func:`mslc.meta_step.mslc_step`).

    Returns a :class:`StepResult` whose ``alpha`` holds the normalized sample weights.
    """
    logits = amp.forward(model, x)
    losses = F.cross_entropy(logits, y, reduction="none")
    params = trainable_params(model)
    weighted = (mwnet_weights(vnet, losses) * losses).mean()
    grads = amp.grad(weighted, list(params.values()), create_graph=True)
    fast = {n: p - lr_virtual * g for (n, p), g in zip(params.items(), grads)}
    meta_loss = meta_loss_at(model, fast, x_meta, y_meta, amp)
    v_params = [p for p in vnet.parameters() if p.requires_grad]
    v_grads = list(amp.grad(meta_loss, v_params, retain_graph=True))
    dist.all_reduce_mean_(v_grads)
    amp.set_grads(v_params, v_grads)
    amp.step(opt_v)
    with torch.no_grad():
        w = mwnet_weights(vnet, losses)
    loss = real_step(model, (w * losses).mean(), opt_w=opt_w, sync_grads=sync_grads, amp=amp)
    y_hat = F.softmax(logits.detach(), dim=1)
    return StepResult(
        loss,
        amp.skipped_as_nan(meta_loss.detach()),
        y_hat,
        F.one_hot(y, logits.shape[1]).to(y_hat.dtype),
        alpha=w.detach(),
        beta=None,
    )
