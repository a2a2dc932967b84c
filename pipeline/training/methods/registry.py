"""Every ``meta.method``'s implementation: one :class:`Method` subclass each. The registry,
:data:`METHODS` (declared without torch in :mod:`pipeline.training.settings.methods`, with
each method's settings), names them; :func:`build_method` loads the one a run uses. The losses and steps themselves are pure functions in
:mod:`mslc.meta_step` and :mod:`mslc.baselines`; a class here only wires one to the
worker's state (:mod:`pipeline.training.methods.state`).

All methods share the data, model, optimizer and LR schedule. Those with
``uses_warmup`` train plain CE on the given labels for ``meta.warmup_epochs`` epochs
first (the ``warmup`` phase; the bank's ỹ starts as the mean softmax of its last
``meta.warmup_avg`` epochs). Those with ``writes_labels`` put what they train on into
the bank's ỹ, so the corrected-label table and metrics mean the same for all: MSLC's
ỹ, Bootstrap's and U-correction's targets, Joint Optimization's optimized labels,
GLC's and MW-Net's current predictions. The others leave ỹ at the given labels.

Every step that moves the classifier ends in :func:`mslc.meta_step.real_step`.

Adding a method: a subclass with ``name``, ``label``, its flags and :meth:`Method.train_step`
(plus whichever other hooks it needs), and one entry in :data:`METHODS` (the class itself,
or a :class:`~pipeline.training.settings.methods.MethodInfo` naming it, with its settings).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from mslc import baselines
from mslc.bank import SoftLabelBank
from mslc.corrector import LossMLP, transition_concentration
from mslc.meta_step import StepResult, ce_step, mslc_step, real_step, soft_cross_entropy
from pipeline.training.methods.state import Data, TrainState, normalize
from pipeline.training.settings.methods import METHODS, MethodInfo

if TYPE_CHECKING:  # type hints only
    from pipeline.training.settings.config import Config

WARMUP = "warmup"


@dataclass
class Batch:
    """One training step's input.

    x : (n, C, H, W) float, normalized, on the device; y : (n,) int64 given labels;
    idx : (n,) int64 bank rows, or None for batches that are not training samples
    (the fine-tuning epochs on the meta set); meta : a callable giving a normalized
    clean batch ``(x_meta, y_meta)`` from the meta sampler; trusted : the same from the
    trusted samples' own sampler of the meta set (MSLC with ``mslc.trusted_passes``), or None.
    """

    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor | None
    meta: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    trusted: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None


def forward(st: TrainState, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits (n, C) with their graph, predictions (n, C) detached)`` of the classifier on ``x``."""
    logits = st.amp.forward(st.model, x)
    return logits, F.softmax(logits.detach(), 1)


def no_meta_loss(like: torch.Tensor) -> torch.Tensor:
    """The ``meta_loss`` of a step that has no meta step (NaN: left out of the epoch's mean),
    made on ``like``'s device (no host-to-device copy per step)."""
    return torch.full((), float("nan"), device=like.device)


def virtual_lr(settings, cfg: Config, st: TrainState) -> float:
    """The look-ahead step's lr: ``settings.virtual_lr_scale`` × the classifier's lr, as it
    decays (``virtual_lr=current``, the paper) or as it started (``initial``: the meta
    signal does not shrink with the schedule). ``settings``: ``cfg.mslc`` or ``cfg.mwnet``."""
    lr = cfg.optim.lr if settings.virtual_lr == "initial" else st.opt_w.param_groups[0]["lr"]
    return lr * settings.virtual_lr_scale


class Method:
    """One training method inside the worker loop.

    Per epoch the loop asks :meth:`phase`, calls :meth:`start_epoch`, streams
    :meth:`batches`, and for each one calls :meth:`step` then :meth:`write_bank`;
    at the epoch's end, :meth:`end_epoch`. :meth:`state_dict` goes into every checkpoint.
    """

    name: ClassVar[str]  # the meta.method value
    label: ClassVar[str]  # how tables name it
    uses_warmup: ClassVar[bool] = True  # meta.warmup_epochs of CE first
    writes_labels: ClassVar[bool] = True  # what it trains on becomes the bank's ỹ
    tunable: ClassVar[tuple[str, ...]] = ("meta.warmup_epochs",)  # the keys a sweep may vary

    def __init_subclass__(cls, info: MethodInfo | None = None, **kw) -> None:
        """``class GCE(Method, info=METHODS["gce"])``: a built-in takes its name, label and
        flags from its declaration."""
        super().__init_subclass__(**kw)
        if info is not None:
            cls.name, cls.label, cls.tunable = info.name, info.label, info.tunable
            cls.uses_warmup, cls.writes_labels = info.uses_warmup, info.writes_labels

    def __init__(self, cfg: Config, device: torch.device) -> None:
        self.cfg, self.device = cfg, device

    @classmethod
    def config_error(cls, cfg: Config) -> str | None:
        """Why ``cfg`` cannot run this method, or None."""
        if cls.uses_warmup and cfg.meta.warmup_epochs >= cfg.optim.epochs:
            return f"meta.warmup_epochs ({cfg.meta.warmup_epochs}) must be < optim.epochs ({cfg.optim.epochs})"
        return None

    def phase(self, epoch: int) -> str:
        """``warmup`` for the CE warm-up epochs, else the method's own phase name."""
        return WARMUP if self.uses_warmup and epoch <= self.cfg.meta.warmup_epochs else self.name

    def start_epoch(self, st: TrainState, data: Data, phase: str) -> None:
        """Set-up at an epoch's start (before any batch)."""

    def batches(self, st: TrainState, data: Data, phase: str, stream: Iterable, *, steps: int) -> Iterable:
        """The epoch's ``(x uint8, y, idx)`` batches: this rank's training stream by default.
        ``steps``: the batches every rank takes (what is left of the epoch after a mid-epoch
        resume; the stream already leaves out what was trained on)."""
        return stream

    def step(self, st: TrainState, data: Data, phase: str, b: Batch) -> StepResult:
        """One training step of ``phase``: CE during the warm-up, else :meth:`train_step`."""
        if phase == WARMUP:
            return ce_step(st.model, b.x, b.y, opt_w=st.opt_w, amp=st.amp)
        return self.train_step(st, data, b)

    def train_step(self, st: TrainState, data: Data, b: Batch) -> StepResult:
        raise NotImplementedError

    def write_bank(self, bank: SoftLabelBank, phase: str, epoch: int, b: Batch, res: StepResult) -> None:
        """After a step: the predictions always; the warm-up also adds them to ỹ's running
        mean (its last ``meta.warmup_avg`` epochs); with ``writes_labels``, ỹ, α and β."""
        if b.idx is None:
            return
        if phase == WARMUP:
            bank.put(b.idx, y_hat=res.y_hat)
            m = self.cfg.meta
            if epoch > m.warmup_epochs - min(m.warmup_avg, m.warmup_epochs):
                bank.accumulate(b.idx, res.y_hat)
        elif self.writes_labels:
            bank.put(b.idx, y_hat=res.y_hat, y_tilde=res.soft, alpha=res.alpha, beta=res.beta)
        else:
            bank.put(b.idx, y_hat=res.y_hat)

    def end_epoch(self, bank: SoftLabelBank, phase: str, epoch: int) -> None:
        """After an epoch's last step: ỹ becomes the warm-up mean after the last warm-up epoch."""
        if phase == WARMUP and epoch == self.cfg.meta.warmup_epochs:
            bank.finish_warmup()

    def epoch_stats(self) -> dict:
        """The method's own per-epoch figures for the epoch's record (read once, at its end)."""
        return {}

    def state_dict(self) -> dict:
        """The method's own state for checkpoints (beside the model, optimizers and bank)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


# ------------------------------------------------------------------ the methods


class MSLC(Method, info=METHODS["mslc"]):
    """The paper's Meta Soft Label Corrector: soft labels from α_net and β_net, meta-learned
    (its settings: ``mslc.*``).

    The corrector and its optimizer live in the worker state (they are the run's product).
    """

    def __init__(self, cfg: Config, device: torch.device) -> None:
        super().__init__(cfg, device)
        self.c_hat: torch.Tensor | None = (
            None  # (C, C) the estimated transition (Eq. 6 with mslc.transition=estimated; the review budget)
        )

    def start_epoch(self, st: TrainState, data: Data, phase: str) -> None:
        self.pulls = torch.zeros(3, device=self.device)  # Σ ‖∇θ_α meta‖, Σ wd·‖θ_α‖, meta updates
        if phase == self.name and self.c_hat is None:
            # from the warm-up's model, once; an eval-mode pass that changes nothing the run trains. The
            # review budget reads it in every run, Eq. 6 only with mslc.transition=estimated
            self.c_hat = estimate_transition(st, data, self.device)
            if self.cfg.mslc.transition == "estimated":
                st.corrector.set_transition(self.c_hat)
        self.mix = st.corrector.mix  # the blend's share the corrector decided (None: none), for the epoch's record

    def train_step(self, st: TrainState, data: Data, b: Batch) -> StepResult:
        m = self.cfg.mslc
        y_prev = st.bank.prev(b.idx)
        update = st.steps_done % m.meta_every == 0
        xm, ym = b.meta() if update else (None, None)
        res = mslc_step(
            st.model,
            st.corrector,
            b.x,
            b.y,
            y_prev.to(self.device),
            xm,
            ym,
            opt_w=st.opt_w,
            opt_theta=st.opt_theta,
            lr_virtual=virtual_lr(m, self.cfg, st),
            meta_grad=m.grad,
            meta_update=update,
            scope=m.meta_scope,
            impl=m.grad_impl,
            lagged=m.lagged,
            amp=st.amp,
            trusted=b.trusted() if b.trusted is not None else None,
        )
        if update:
            self.pulls += theta_pulls(st.corrector.alpha_net, m.weight_decay)
        return res

    def epoch_stats(self) -> dict:
        """``alpha_grad_norm`` (the meta-gradient's size on α_net's parameters) beside
        ``alpha_decay_pull`` (weight decay's, ``wd·‖θ_α‖``), means over the epoch's meta
        updates: when the second is the larger, θ drifts back toward its initial α ≈ 0.5."""
        pulls = getattr(self, "pulls", None)
        if pulls is None or pulls[2] == 0:
            return {}
        g, w, n = pulls.tolist()
        return {"alpha_grad_norm": g / n, "alpha_decay_pull": w / n, **self.mix_stats()}

    def mix_stats(self) -> dict:
        """``noise_concentration`` (:func:`mslc.corrector.transition_concentration` of the
        estimated transition) and ``posterior_mix``, the share of the posterior in the
        classifier's target that the corrector decided (``mslc.posterior_mix``,
        ``mslc.mix_min_concentration``): one host read an epoch."""
        if self.c_hat is None or self.cfg.mslc.transition != "estimated":
            return {}
        mix = getattr(self, "mix", None)
        return {
            "noise_concentration": transition_concentration(self.c_hat),
            "posterior_mix": 0.0 if mix is None else float(mix),
        }

    def state_dict(self) -> dict:
        """The epoch's running pulls (a checkpoint inside an epoch resumes them) and the
        transition estimate (the corrector's buffer holds it too)."""
        pulls = getattr(self, "pulls", None)
        return {"c_hat": self.c_hat, **({} if pulls is None else {"pulls": pulls.cpu()})}

    def load_state_dict(self, state: dict) -> None:
        if state.get("pulls") is not None:
            self.pulls = state["pulls"].to(self.device)
        self.c_hat = state.get("c_hat")


def transition_estimate(st: TrainState) -> np.ndarray | None:
    """(C, C) the noise transition the run estimated on its trusted meta set (MSLC with
    ``mslc.transition=estimated``, GLC), or None."""
    c_hat = getattr(st.method, "c_hat", None)
    return None if c_hat is None else c_hat.detach().cpu().double().numpy()


def estimate_transition(st: TrainState, data: Data, device: torch.device) -> torch.Tensor:
    """GLC's estimate of the noise transition (:func:`mslc.baselines.glc_estimate`): the
    current model's mean prediction on the clean meta samples of each class, (C, C) float32
    on the CPU. Called after the warm-up, while the model has learnt the given labels' noise."""
    st.model.eval()
    with torch.no_grad():
        probs = torch.cat(
            [
                F.softmax(st.model(normalize(data.meta_x[i : i + 512], data, device)), 1).cpu()
                for i in range(0, len(data.meta_y), 512)
            ]
        )
    st.model.train()
    return torch.from_numpy(baselines.glc_estimate(probs, data.meta_y.cpu(), data.num_classes)).float()


def theta_pulls(net: torch.nn.Module, weight_decay: float) -> torch.Tensor:
    """``[‖∇‖, weight_decay·‖θ‖, 1]`` of ``net``'s parameters (after a meta step set ``.grad``);
    a tensor, so the hot path does not wait on the device."""
    params = [p for p in net.parameters() if p.grad is not None]
    grad = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in params])))
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.detach() for p in params])))
    return torch.stack([grad, weight_decay * norm, torch.ones_like(norm)])


class CE(Method, info=METHODS["ce"]):
    """Cross-entropy on the given labels throughout, no correction."""

    def train_step(self, st: TrainState, data: Data, b: Batch) -> StepResult:
        return ce_step(st.model, b.x, b.y, opt_w=st.opt_w, amp=st.amp)


class FineTune(CE, info=METHODS["finetune"]):
    """CE, then the last finetune.epochs epochs on the clean meta set."""

    def phase(self, epoch: int) -> str:
        return "finetune" if epoch > self.cfg.optim.epochs - self.cfg.finetune.epochs else "ce"

    def batches(self, st: TrainState, data: Data, phase: str, stream: Iterable, *, steps: int) -> Iterable:
        return self.meta_batches(st, steps) if phase == "finetune" else stream

    @staticmethod
    def meta_batches(st: TrainState, steps: int) -> Iterator:
        """``steps`` clean meta batches (a training epoch's steps)."""
        for _ in range(steps):
            x, y = st.meta.next()
            yield x, y, None


class GCE(Method, info=METHODS["gce"]):
    """Generalized cross-entropy (gce.q) on the given labels throughout."""

    def train_step(self, st: TrainState, data: Data, b: Batch) -> StepResult:
        logits, p = forward(st, b.x)
        loss = real_step(st.model, baselines.gce_loss(logits, b.y, self.cfg.gce.q), opt_w=st.opt_w, amp=st.amp)
        return StepResult(loss, no_meta_loss(p), p, F.one_hot(b.y, p.shape[1]).to(p.dtype))


class GLC(Method, info=METHODS["glc"]):
    """Gold Loss Correction: a corruption matrix from the clean set corrects the loss.

    Ĉ is estimated once, from the warm-up model's predictions on the meta set; then the
    corrected loss on noisy batches and CE on trusted (meta) ones, weighted by count.
    """

    def __init__(self, cfg: Config, device: torch.device) -> None:
        super().__init__(cfg, device)
        self.c_hat: torch.Tensor | None = None  # (C, C)

    def start_epoch(self, st: TrainState, data: Data, phase: str) -> None:
        if phase == self.name and self.c_hat is None:
            self.c_hat = estimate_transition(st, data, self.device)

    def train_step(self, st: TrainState, data: Data, b: Batch) -> StepResult:
        xm, ym = b.meta()
        n, k = len(b.y), len(ym)
        logits = st.amp.forward(st.model, torch.cat([b.x, xm]))
        loss = (
            baselines.glc_loss(logits[:n], b.y, self.c_hat.to(self.device)) * n + F.cross_entropy(logits[n:], ym) * k
        ) / (n + k)
        p = F.softmax(logits[:n].detach(), 1)
        return StepResult(real_step(st.model, loss, opt_w=st.opt_w, amp=st.amp), no_meta_loss(p), p, p)

    def state_dict(self) -> dict:
        return {"c_hat": self.c_hat}

    def load_state_dict(self, state: dict) -> None:
        self.c_hat = state.get("c_hat")


class MWNet(Method, info=METHODS["mwnet"]):
    """Meta-Weight-Net: per-sample loss weights from a meta-learned weight net.

    The weight net (1 → hidden → 1 on the loss) learns through one virtual step, as MSLC's
    corrector does; its settings are ``mwnet.*``.
    """

    def __init__(self, cfg: Config, device: torch.device) -> None:
        super().__init__(cfg, device)
        s = cfg.mwnet
        self.vnet = LossMLP(s.hidden).to(device)
        self.opt_v = torch.optim.Adam(self.vnet.parameters(), lr=s.lr, weight_decay=s.weight_decay)

    def train_step(self, st: TrainState, data: Data, b: Batch) -> StepResult:
        xm, ym = b.meta()
        res = baselines.mwnet_step(
            st.model,
            self.vnet,
            b.x,
            b.y,
            xm,
            ym,
            opt_w=st.opt_w,
            opt_v=self.opt_v,
            lr_virtual=virtual_lr(self.cfg.mwnet, self.cfg, st),
            amp=st.amp,
        )
        return StepResult(res.loss, res.meta_loss, res.y_hat, res.y_hat, alpha=res.alpha)

    def state_dict(self) -> dict:
        return {"vnet": self.vnet.state_dict(), "opt_v": self.opt_v.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("vnet") is not None:
            self.vnet.load_state_dict(state["vnet"])
            self.opt_v.load_state_dict(state["opt_v"])


class BootstrapSoft(Method, info=METHODS["bootstrap-soft"]):
    """Soft bootstrapping: target β·given + (1 − β)·prediction (β 0.95)."""

    hard, default_beta = False, 0.95

    def train_step(self, st: TrainState, data: Data, b: Batch) -> StepResult:
        logits, p = forward(st, b.x)
        beta = self.cfg.bootstrap.beta or self.default_beta
        target = baselines.bootstrap_target(b.y, p, beta, hard=self.hard)
        loss = real_step(st.model, soft_cross_entropy(logits, target), opt_w=st.opt_w, amp=st.amp)
        return StepResult(loss, no_meta_loss(p), p, target)


class BootstrapHard(BootstrapSoft, info=METHODS["bootstrap-hard"]):
    """Hard bootstrapping: target β·given + (1 − β)·one-hot of the prediction (β 0.8)."""

    hard, default_beta = True, 0.8


class JointOpt(Method, info=METHODS["joint-opt"]):
    """Joint Optimization: labels replaced by the model's predictions, with prior and entropy terms.

    Soft CE to the bank's labels (each epoch's predictions) plus ``joint.alpha`` ×
    the class-prior KL and ``joint.beta`` × the prediction entropy.
    """

    def train_step(self, st: TrainState, data: Data, b: Batch) -> StepResult:
        logits, p = forward(st, b.x)
        labels = st.bank.prev(b.idx)
        prior = torch.full((data.num_classes,), 1.0 / data.num_classes, device=self.device)
        j = self.cfg.joint
        loss = baselines.joint_opt_loss(logits, labels.to(self.device), prior, alpha=j.alpha, beta=j.beta)
        return StepResult(real_step(st.model, loss, opt_w=st.opt_w, amp=st.amp), no_meta_loss(p), p, p)


class UCorrection(Method, info=METHODS["u-correction"]):
    """U-correction without mixup: a loss mixture model weights hard bootstrapping.

    A two-component beta mixture on per-sample losses, refitted every epoch from the
    bank, gives each sample's posterior of being noisy.
    """

    def __init__(self, cfg: Config, device: torch.device) -> None:
        super().__init__(cfg, device)
        self.w_noisy: torch.Tensor | None = None  # (N,) posterior of being noisy; refitted each epoch

    def start_epoch(self, st: TrainState, data: Data, phase: str) -> None:
        if phase != self.name:
            return
        t = st.bank.table()  # collective
        p_given = t["y_hat"][np.arange(len(data.labels)), data.labels]
        x = baselines.BetaMixture.scale(-np.log(np.clip(p_given, 1e-12, None)))
        self.w_noisy = torch.from_numpy(baselines.BetaMixture().fit(x).posterior_noisy(x)).float()

    def train_step(self, st: TrainState, data: Data, b: Batch) -> StepResult:
        logits, p = forward(st, b.x)
        w = self.w_noisy[b.idx.cpu()].to(self.device, non_blocking=True)
        target = baselines.dynamic_bootstrap_target(b.y, p, w, hard=True)
        loss = real_step(st.model, soft_cross_entropy(logits, target), opt_w=st.opt_w, amp=st.amp)
        return StepResult(loss, no_meta_loss(p), p, target, alpha=1.0 - w)

    def state_dict(self) -> dict:
        """The epoch's fit (a run resumed inside the epoch must not refit it on a later bank)."""
        return {"w_noisy": self.w_noisy}

    def load_state_dict(self, state: dict) -> None:
        self.w_noisy = state.get("w_noisy")


def build_method(cfg: Config, device: torch.device) -> Method:
    """The registered method of ``meta.method``, built for this run."""
    return METHODS[cfg.meta.method](cfg, device)
