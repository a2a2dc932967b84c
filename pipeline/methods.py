"""Every method of ``meta.method`` inside the worker loop: its phase per epoch, what it
sets up at an epoch's start, and its step. The losses live in :mod:`mslc.baselines`.

All methods share the data, model, optimizer and LR schedule. Those that start from
labels learned in a CE warm-up (``mslc``, ``mwnet``, ``glc``, ``bootstrap-*``,
``joint-opt``, ``u-correction``) use ``meta.warmup_epochs``; ``ce`` and ``gce`` train
their loss throughout; ``finetune`` trains CE and spends its last
``meta.finetune_epochs`` epochs on the clean meta set. What a method trains on (its
target or corrected label) goes into the bank's ỹ, so the corrected-label table and
metrics mean the same for all: MSLC's ỹ, Bootstrap's and U-correction's targets, Joint
Optimization's optimized labels, GLC's and MW-Net's current predictions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mslc import baselines, dist
from mslc.corrector import LossMLP
from mslc.meta_step import StepResult, ce_step, mslc_step, soft_cross_entropy
from pipeline.config import METHODS, NO_WARMUP_METHODS, Config
from pipeline.state import normalize

WARMUP_METHODS = tuple(m for m in METHODS if m not in NO_WARMUP_METHODS)  # also: those that write ỹ


@dataclass
class MethodState:
    """What a baseline keeps between steps: MW-Net's weight net and its optimizer, GLC's
    corruption matrix (checkpointed); U-correction's per-sample noisy posterior (refit
    every epoch from the bank, not saved)."""

    vnet: LossMLP | None = None
    opt_v: torch.optim.Optimizer | None = None
    c_hat: torch.Tensor | None = None
    w_noisy: torch.Tensor | None = None

    def state_dict(self) -> dict:
        return {"vnet": self.vnet.state_dict() if self.vnet else None,
                "opt_v": self.opt_v.state_dict() if self.opt_v else None,
                "c_hat": self.c_hat}

    def load_state_dict(self, s: dict) -> None:
        if self.vnet is not None and s.get("vnet") is not None:
            self.vnet.load_state_dict(s["vnet"])
            self.opt_v.load_state_dict(s["opt_v"])
        self.c_hat = s.get("c_hat")


def build_method_state(cfg: Config, device: torch.device) -> MethodState:
    ms = MethodState()
    if cfg.meta.method == "mwnet":
        ms.vnet = LossMLP(cfg.meta.hidden).to(device)
        ms.opt_v = torch.optim.Adam(ms.vnet.parameters(), lr=cfg.meta.alpha_lr, weight_decay=cfg.meta.weight_decay)
    return ms


def phase_of(cfg: Config, epoch: int) -> str:
    """``warmup``, or the method's name, or ``finetune`` / ``ce`` for the fine-tuning baseline."""
    m = cfg.meta.method
    if m == "finetune":
        return "finetune" if epoch > cfg.optim.epochs - cfg.meta.finetune_epochs else "ce"
    if m in WARMUP_METHODS and epoch <= cfg.meta.warmup_epochs:
        return "warmup"
    return m


def start_epoch(cfg: Config, st, data, phase: str, device: torch.device) -> None:
    """GLC: estimate Ĉ once, from the warm-up model's predictions on the clean meta set.
    U-correction: refit the beta mixture on every sample's last training loss."""
    ms: MethodState = st.method
    if phase == "glc" and ms.c_hat is None:
        st.model.eval()
        with torch.no_grad():
            probs = torch.cat([F.softmax(st.model(normalize_meta(data, i, device)), 1).cpu()
                               for i in range(0, len(data.meta_y), 512)])
        st.model.train()
        ms.c_hat = torch.from_numpy(baselines.glc_estimate(probs, data.meta_y.cpu(), data.num_classes)).float()
    if phase == "u-correction":
        t = st.bank.table()  # collective
        p_given = t["y_hat"][np.arange(len(data.labels)), data.labels]
        losses = -np.log(np.clip(p_given, 1e-12, None))
        x = baselines.BetaMixture.scale(losses)
        ms.w_noisy = torch.from_numpy(baselines.BetaMixture().fit(x).posterior_noisy(x)).float()


def normalize_meta(data, start: int, device: torch.device) -> torch.Tensor:
    return normalize(data.meta_x[start : start + 512], data, device)


def _real_step(st, loss: torch.Tensor) -> torch.Tensor:
    """Back-propagate ``loss``, average the gradients over ranks, step the classifier; returns it detached."""
    st.opt_w.zero_grad(set_to_none=True)
    loss.backward()
    dist.average_gradients_(st.model.parameters())
    st.opt_w.step()
    return loss.detach()


def bootstrap_beta(cfg: Config, hard: bool) -> float:
    return cfg.meta.bootstrap_beta or (0.8 if hard else 0.95)


def step(cfg: Config, st, data, phase: str, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
         device: torch.device, meta_batch) -> StepResult:
    """One training step of ``phase``; ``meta_batch()`` gives a normalized clean batch."""
    nan = torch.tensor(float("nan"))
    m = cfg.meta
    if phase in ("warmup", "ce"):
        return ce_step(st.model, x, y, opt_w=st.opt_w)
    if phase == "mslc":
        _, y_prev = st.bank.rows(idx)
        update = st.steps_done % m.meta_every == 0
        xm, ym = meta_batch() if update else (None, None)
        lr_v = st.opt_w.param_groups[0]["lr"] * m.virtual_lr_scale
        return mslc_step(st.model, st.corrector, x, y, y_prev.to(device), xm, ym, opt_w=st.opt_w,
                         opt_theta=st.opt_theta, lr_virtual=lr_v, meta_grad=m.grad, meta_update=update,
                         scope=m.meta_scope, impl=m.grad_impl)
    if phase == "mwnet":
        xm, ym = meta_batch()
        lr_v = st.opt_w.param_groups[0]["lr"] * m.virtual_lr_scale
        res = baselines.mwnet_step(st.model, st.method.vnet, x, y, xm, ym, opt_w=st.opt_w, opt_v=st.method.opt_v,
                                   lr_virtual=lr_v)
        return StepResult(res.loss, res.meta_loss, res.y_hat, res.y_hat, alpha=res.alpha)
    if phase == "glc":  # the corrected loss on the noisy batch, CE on the trusted one, weighted by count
        xm, ym = meta_batch()
        n, k = len(y), len(ym)
        logits = st.model(torch.cat([x, xm]))
        loss = (baselines.glc_loss(logits[:n], y, st.method.c_hat.to(device)) * n
                + F.cross_entropy(logits[n:], ym) * k) / (n + k)
        p = F.softmax(logits[:n].detach(), 1)
        return StepResult(_real_step(st, loss), nan, p, p)
    logits = st.model(x)
    p = F.softmax(logits.detach(), 1)
    if phase == "gce":
        loss = _real_step(st, baselines.gce_loss(logits, y, m.gce_q))
        return StepResult(loss, nan, p, F.one_hot(y, p.shape[1]).to(p.dtype))
    if phase in ("bootstrap-soft", "bootstrap-hard"):
        hard = phase.endswith("hard")
        target = baselines.bootstrap_target(y, p, bootstrap_beta(cfg, hard), hard=hard)
        return StepResult(_real_step(st, soft_cross_entropy(logits, target)), nan, p, target)
    if phase == "joint-opt":
        _, labels = st.bank.rows(idx)
        prior = torch.full((data.num_classes,), 1.0 / data.num_classes, device=device)
        loss = baselines.joint_opt_loss(logits, labels.to(device), prior, alpha=m.joint_alpha, beta=m.joint_beta)
        return StepResult(_real_step(st, loss), nan, p, p)  # the labels become the epoch's predictions
    if phase == "u-correction":
        w = st.method.w_noisy[idx.cpu()].to(device)
        target = baselines.dynamic_bootstrap_target(y, p, w, hard=True)
        return StepResult(_real_step(st, soft_cross_entropy(logits, target)), nan, p, target, alpha=1.0 - w)
    raise ValueError(f"no step for phase {phase!r}")


def finetune_steps(cfg: Config, data) -> int:
    """As many meta-set steps as a training epoch has (this rank's share)."""
    n = data.manifest["splits"]["train"]["count"]
    return max(1, math.ceil(n / dist.world_size() / cfg.optim.batch_size))
