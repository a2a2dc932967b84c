"""One MSLC step (paper Algorithm 1, Eqs. 9–11) and the plain CE step.

The look-ahead runs on the unwrapped module with functional parameters
(``torch.func.functional_call``): nothing is copied, and batch-norm running
statistics are touched only by the one real forward pass (the look-ahead's passes
normalize with their batch's statistics and leave the running ones alone:
:func:`batch_statistics_only`).

Every model pass runs through an :class:`mslc.precision.Amp` (``amp``, default fp32):
autocast forwards with fp32 logits, fp16 loss scaling. The phases of a step are
labelled (:func:`phase`, names in :data:`PHASES`) for the profiler and, while a
:class:`PhaseTimer` is installed (:func:`timing_phases`), timed with CUDA events:
``benchmarks/step_cost.py``'s phase table reads them.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.profiler import record_function

# torch's forward-mode AD registers its jvp decompositions with torch.jit.script the first time a
# dual tensor is made, and torch.jit.script itself warns it is deprecated: torch's own call, not
# ours, so the warning is filtered by its text and module rather than shown in every worker.
warnings.filterwarnings(
    "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning, module=r"torch\.jit\._script"
)

from mslc import dist
from mslc.corrector import Corrector
from mslc.options import META_GRAD_IMPLS, META_GRADS, META_SCOPES  # noqa: F401  (re-exported: the names live there, torch-free)
from mslc.precision import FP32, Amp

PHASES = {  # profiler label: what it times
    "step/forward": "the real forward (its logits feed every later phase)",
    "step/train_grad": "∇_w L(w, θ): the training gradient the virtual step takes (create_graph for double backward)",
    "step/meta": "the meta forward and backward at the look-ahead weights (h and the meta loss)",
    "step/jvp": "forward mode only: the Jacobian-vector product J·h of the training batch",
    "step/theta": "θ's gradient (back through the corrector, or the double backward) and its Adam step",
    "step/real": "the real step: its backward (none when lagged), gradient averaging and the SGD update",
}


class PhaseTimer:
    """Time in each :data:`PHASES` label of the steps run while it is installed
    (:func:`timing_phases`). On CUDA a phase is timed by two events on the current stream, so
    it covers every kernel enqueued between them, the backward's too (autograd launches those
    from its own device thread, which profiler labels on the calling thread do not cover;
    ``backward()`` returns once they are enqueued); nothing waits for the device until
    :meth:`totals_ms`. Elsewhere a host clock (CPU kernels run on the calling thread)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.marks: list[tuple[str, object, object]] = []

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def totals_ms(self) -> dict[str, float]:
        """Label → milliseconds summed over the marked phases (nested phases count in each)."""
        if self.cuda:
            torch.cuda.synchronize()
        out: dict[str, float] = {}
        for label, start, end in self.marks:
            ms = start.elapsed_time(end) if self.cuda else 1000.0 * (end - start)
            out[label] = out.get(label, 0.0) + ms
        return out


_TIMER: PhaseTimer | None = None


@contextmanager
def phase(label: str) -> Iterator[None]:
    """A labelled phase of a step: a profiler range and, while a :class:`PhaseTimer` is
    installed, a timed one (no device synchronisation either way)."""
    with record_function(label):
        timer = _TIMER
        if timer is None:
            yield
            return
        start = timer.mark()
        try:
            yield
        finally:
            timer.marks.append((label, start, timer.mark()))


@contextmanager
def timing_phases(timer: PhaseTimer) -> Iterator[PhaseTimer]:
    """Install ``timer`` for the steps run inside (benchmarks; one thread)."""
    global _TIMER
    previous, _TIMER = _TIMER, timer
    try:
        yield timer
    finally:
        _TIMER = previous


@dataclass
class StepResult:
    """What one step hands back; tensors are detached.

    Attributes
    ----------
    loss : () the training loss of the real step.
    meta_loss : () the clean meta loss at the look-ahead weights (NaN for CE).
    y_hat : (n, C) predictions at the weights before the step, rows sum to 1.
    soft : (n, C) soft labels the real step trained on, rows sum to 1.
    alpha, beta : (n,) corrector outputs (None for CE).
    """

    loss: torch.Tensor
    meta_loss: torch.Tensor
    y_hat: torch.Tensor
    soft: torch.Tensor
    alpha: torch.Tensor | None = None
    beta: torch.Tensor | None = None


def real_step(
    model: nn.Module,
    loss: torch.Tensor,
    *,
    opt_w: torch.optim.Optimizer,
    sync_grads: Callable[[nn.Module], None] | None = None,
    amp: Amp = FP32,
    grads: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """The classifier's update: zero-grad, back-propagate ``loss``, average the gradients
    over ranks (``sync_grads``, default :mod:`mslc.dist`), step ``opt_w``. Returns the loss
    detached. Every step that moves the classifier ends here.

    ``grads`` (one per trainable parameter, unscaled, already averaged over ranks) are
    taken as the gradient instead of a backward of ``loss`` (the lagged MSLC step)."""
    with phase("step/real"):
        opt_w.zero_grad(set_to_none=True)
        if grads is None:
            amp.scale(loss).backward()
            (sync_grads or (lambda m: dist.average_gradients_(m.parameters())))(model)
        else:
            amp.set_grads(list(trainable_params(model).values()), grads)
        amp.step(opt_w)
        amp.update()
        return loss.detach()


@contextmanager
def batch_statistics_only(model: nn.Module):
    """Inside, the model's training-mode batch-norm layers normalize with the batch's
    statistics and neither read nor update their running ones (the look-ahead's passes:
    what cloning the buffers for each pass did, without the copies)."""
    bns = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``−Σ_c target_c · log softmax(logits)_c`` (paper Eq. 4)."""
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


def batch_targets(
    corrector: Corrector,
    logits: torch.Tensor,
    y: torch.Tensor,
    y_prev: torch.Tensor,
    fixed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The training targets of one batch: the corrector's soft labels of its first ``n``
    rows (blended with its prediction term π, ``(1 − λ)·ỹ + λ·π``, where the corrector has a
    ``mix`` λ: ``mslc.posterior_mix``), then ``fixed`` targets of the trusted rows that follow
    (their one-hot clean labels).

    Parameters
    ----------
    logits : (n + k, C) the real forward's logits (read detached).
    y : (n,) int64 given labels; y_prev : (n, C) previous soft labels.
    fixed : (k, C) or None (k = 0).

    Returns
    -------
    ``(targets (n + k, C), soft (n, C), alpha (n,), beta (n,))``; ``soft`` and ``targets``
    carry the graph into θ where the corrector's parameters require it.
    """
    n = len(y)
    soft, alpha, beta, pred = corrector.correct(F.softmax(logits[:n].detach(), dim=1), y, y_prev)
    train = soft
    if corrector.mix is not None:  # mslc.posterior_mix: a (0-d) tensor, read without a host sync
        train = (1.0 - corrector.mix) * soft + corrector.mix * pred.to(soft.dtype)
    targets = train if fixed is None else torch.cat([train, fixed.to(soft.dtype)])
    return targets, soft, alpha, beta


def trusted_targets(y_trusted: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(k,) int64 clean labels → (k, C) one-hot targets (a trusted sample is trained on as it is labelled)."""
    return F.one_hot(y_trusted, num_classes).to(dtype)


def trainable_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def last_layer_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters of the model's last ``nn.Linear`` (its classifier layer)."""
    name = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not name:
        raise ValueError("meta scope 'last' needs a model with an nn.Linear classifier layer")
    prefix = name[-1] + "."
    return {n: p for n, p in model.named_parameters() if n.startswith(prefix) and p.requires_grad}


def virtual_params(model: nn.Module, scope: str) -> dict[str, torch.Tensor]:
    """The parameters the virtual step moves: all (exact) or the last layer's (an approximation)."""
    if scope not in META_SCOPES:
        raise ValueError(f"meta scope must be one of {META_SCOPES}, got {scope!r}")
    return trainable_params(model) if scope == "all" else last_layer_params(model)


def training_grads(
    model: nn.Module,
    corrector: Corrector,
    logits: torch.Tensor,
    y: torch.Tensor,
    y_prev: torch.Tensor,
    scope: str = "all",
    amp: Amp = FP32,
    fixed: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, ...]]:
    """``(virtual-step params, ∇_w L(w, θ))``, the gradient kept differentiable in θ
    (``fixed``: the trusted rows' targets, :func:`batch_targets`)."""
    with phase("step/train_grad"):
        params = virtual_params(model, scope)
        targets, _, _, _ = batch_targets(corrector, logits, y, y_prev, fixed)
        grads = amp.grad(soft_cross_entropy(logits, targets), list(params.values()), create_graph=True)
        return params, grads


def meta_loss_at(
    model: nn.Module, weights: dict[str, torch.Tensor], x_meta: torch.Tensor, y_meta: torch.Tensor, amp: Amp = FP32
) -> torch.Tensor:
    """Clean meta loss with ``weights`` in place of the trainable parameters they name;
    batch-norm normalizes with the meta batch's statistics, and the module's own never move.
    The other trainable parameters enter detached: the pass records a graph only where
    ``weights`` are used (the classifier layer alone under scope ``last``)."""
    frozen = {n: p.detach() for n, p in trainable_params(model).items() if n not in weights}
    with batch_statistics_only(model):
        logits = amp.forward(lambda xm: functional_call(model, frozen | weights, (xm,)), x_meta)
    return F.cross_entropy(logits, y_meta)


def lookahead_meta_loss(
    model: nn.Module,
    corrector: Corrector,
    logits: torch.Tensor,
    y: torch.Tensor,
    y_prev: torch.Tensor,
    x_meta: torch.Tensor,
    y_meta: torch.Tensor,
    *,
    lr_virtual: float,
) -> torch.Tensor:
    """Clean meta loss after one virtual SGD step, differentiable in θ (Eqs. 9–10).

    Parameters
    ----------
    logits : (n, C)
        ``model(x)`` at the current weights, with its graph (the real forward).
    y : (n,) int64 given labels; y_prev : (n, C) previous soft labels.
    x_meta : (m, ...) clean inputs; y_meta : (m,) int64 clean labels.
    lr_virtual : float
        Step size of ``ŵ(θ) = w − lr_virtual · ∇_w L(w, θ)``.

    Returns
    -------
    () the meta loss ``(1/m) Σ CE(f(x_meta; ŵ(θ)), y_meta)``.
    """
    params, grads = training_grads(model, corrector, logits, y, y_prev)
    fast = {n: p - lr_virtual * g for (n, p), g in zip(params.items(), grads)}
    return meta_loss_at(model, fast, x_meta, y_meta)


def meta_gradient(
    model: nn.Module,
    corrector: Corrector,
    logits: torch.Tensor,
    y: torch.Tensor,
    y_prev: torch.Tensor,
    x_meta: torch.Tensor,
    y_meta: torch.Tensor,
    *,
    lr_virtual: float,
    mode: str = "exact",
    scope: str = "all",
    impl: str = "double-backward",
    x: torch.Tensor | None = None,
    amp: Amp = FP32,
    training_grad: list | None = None,
    fixed: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """θ-gradient of the clean meta loss through one virtual step, across all workers.

    ``impl='jvp'`` computes the same gradient in forward mode (needs ``x``, the batch
    ``logits`` came from): the training loss is linear in the soft labels, so
    ``⟨g(θ), h⟩ = mean_i −ỹ_i(θ)·(J_i h)`` with ``J_i h`` one Jacobian-vector product of
    the log-softmax outputs; θ's gradient then only back-propagates through the corrector.

    With ``ḡ(θ) = mean_r ∇_w L_r(w, θ)`` and ``ŵ = w − η·ḡ``, the chain rule gives
    ``∇_θ M = −η · mean_r (∂g_r/∂θ)ᵀ h`` where ``h = mean_r ∇_ŵ M_r(ŵ)``. Each rank
    back-propagates ``−η·⟨g_r(θ), h⟩`` into θ and the results are averaged: the
    gradient of the global meta loss (``mode='exact'``). ``mode='local'`` takes each
    rank's own virtual step and meta loss and only averages θ's gradients. At world
    size 1 both equal the gradient of :func:`lookahead_meta_loss`.

    ``scope='last'`` moves only the classifier layer in the virtual step: an
    approximation whose second-order term touches that layer alone. Its θ-gradient is
    always taken by the double backward, whatever ``impl``: that runs back through the
    classifier layer only, where forward mode would run the whole model again.

    Returns ``(θ-gradients in corrector.parameters() order, meta loss (averaged over
    ranks in exact mode))``. A list passed as ``training_grad`` receives the training
    gradient ``ḡ`` (detached, averaged over ranks in both modes; ``scope='all'``): the
    lagged step's real gradient.

    ``fixed`` (k, C): targets of k trusted rows after the batch's n (``logits`` and ``x``
    then hold n + k rows, ``y`` and ``y_prev`` n): the virtual step trains on them as the
    real step does; they do not depend on θ.
    """
    if mode not in META_GRADS:
        raise ValueError(f"meta-gradient mode must be one of {META_GRADS}, got {mode!r}")
    if impl not in META_GRAD_IMPLS:
        raise ValueError(f"meta-gradient impl must be one of {META_GRAD_IMPLS}, got {impl!r}")
    if impl == "jvp" and scope == "all":
        if x is None:
            raise ValueError("impl='jvp' needs the training batch x")
        return _meta_gradient_jvp(
            model,
            corrector,
            logits,
            x,
            y,
            y_prev,
            x_meta,
            y_meta,
            lr_virtual=lr_virtual,
            mode=mode,
            scope=scope,
            amp=amp,
            training_grad=training_grad,
            fixed=fixed,
        )
    params, grads = training_grads(model, corrector, logits, y, y_prev, scope, amp, fixed)
    g = [t.detach().clone() for t in grads]
    h, meta_loss = meta_direction(model, params, g, x_meta, y_meta, lr_virtual=lr_virtual, mode=mode, amp=amp)
    if training_grad is not None:
        if mode != "exact":
            dist.all_reduce_mean_(g)
        training_grad[:] = g
    with phase("step/theta"):
        dot = -lr_virtual * sum((gi * hi).sum() for gi, hi in zip(grads, h))
        return theta_gradients(dot, corrector, retain_graph=training_grad is None, amp=amp), meta_loss


def meta_direction(
    model: nn.Module,
    params: dict[str, torch.Tensor],
    g: list[torch.Tensor],
    x_meta: torch.Tensor,
    y_meta: torch.Tensor,
    *,
    lr_virtual: float,
    mode: str,
    amp: Amp = FP32,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``(h, meta loss)``: the meta loss's gradient at ``ŵ = w − η·ḡ`` (``g`` detached, averaged
    over ranks in place in exact mode, as are ``h`` and the loss)."""
    with phase("step/meta"):
        if mode == "exact":
            dist.all_reduce_mean_(g)
        fast = {n: (p.detach() - lr_virtual * gi).requires_grad_() for (n, p), gi in zip(params.items(), g)}
        meta_loss = meta_loss_at(model, fast, x_meta, y_meta, amp)
        h = list(amp.grad(meta_loss, list(fast.values())))
        meta_loss = meta_loss.detach()
        if mode == "exact":
            dist.all_reduce_mean_([*h, meta_loss])
        return h, meta_loss


def theta_gradients(
    dot: torch.Tensor, corrector: Corrector, *, retain_graph: bool = False, amp: Amp = FP32
) -> list[torch.Tensor]:
    """∇_θ of ``dot``, averaged over ranks; zeros for an unused net (β_net when β is fixed)."""
    theta = [p for p in corrector.parameters() if p.requires_grad]
    grads = amp.grad(dot, theta, retain_graph=retain_graph, allow_unused=True)
    out = [torch.zeros_like(p) if g is None else g for p, g in zip(theta, grads)]
    dist.all_reduce_mean_(out)
    return out


def _meta_gradient_jvp(
    model,
    corrector,
    logits,
    x,
    y,
    y_prev,
    x_meta,
    y_meta,
    *,
    lr_virtual,
    mode,
    scope,
    amp=FP32,
    training_grad=None,
    fixed=None,
):
    with phase("step/train_grad"):
        params = virtual_params(model, scope)
        targets, soft, _, _ = batch_targets(corrector, logits, y, y_prev, fixed)
        g = [
            t.detach()
            for t in amp.grad(
                soft_cross_entropy(logits, targets.detach()), list(params.values()), retain_graph=training_grad is None
            )
        ]
    h, meta_loss = meta_direction(model, params, g, x_meta, y_meta, lr_virtual=lr_virtual, mode=mode, amp=amp)
    if training_grad is not None:
        if mode != "exact":
            dist.all_reduce_mean_(g)
        training_grad[:] = g
    with phase("step/jvp"), batch_statistics_only(model), fwAD.dual_level():
        duals = {n: fwAD.make_dual(p.detach(), t) for (n, p), t in zip(params.items(), h)}
        out = F.log_softmax(amp.forward(lambda xb: functional_call(model, duals, (xb,)), x), dim=1)
        u = fwAD.unpack_dual(out).tangent
    with phase("step/theta"):
        # −η·⟨g(θ), h⟩ with ⟨g, h⟩ = mean over all n + k rows of −target·(J h); only the n soft rows depend on θ
        n = len(y)
        dot = lr_virtual * (soft * u[:n].detach()).sum(1).mean() * (n / len(u))
        return theta_gradients(dot, corrector, amp=amp), meta_loss


def mslc_step(
    model: nn.Module,
    corrector: Corrector,
    x: torch.Tensor,
    y: torch.Tensor,
    y_prev: torch.Tensor,
    x_meta: torch.Tensor,
    y_meta: torch.Tensor,
    *,
    opt_w: torch.optim.Optimizer,
    opt_theta: torch.optim.Optimizer,
    lr_virtual: float,
    meta_grad: str = "exact",
    sync_grads: Callable[[nn.Module], None] | None = None,
    meta_update: bool = True,
    scope: str = "all",
    impl: str = "double-backward",
    lagged: bool = False,
    amp: Amp = FP32,
    trusted: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> StepResult:
    """One MSLC step: virtual step, Adam step on θ, real step with the new soft labels.

    ``meta_update=False`` skips the virtual step and θ's update (the soft labels come
    from the current θ): the "meta update every k steps" approximation. ``scope``: see
    :func:`meta_gradient`.

    ``lagged=True`` (an approximation, ``scope='all'``): the real step trains on the soft
    labels of θ *before* this step's meta update, so its gradient is the training
    gradient the virtual step already took, and the real backward is skipped. θ's
    update reaches the classifier one step later.

    ``x`` (n, ...) with given labels ``y`` (n,) and previous soft labels ``y_prev``
    (n, C); ``x_meta`` (m, ...) with clean labels ``y_meta`` (m,). Across workers the
    θ-gradient is that of :func:`meta_gradient` (``meta_grad``), and the real step's
    gradient is averaged by ``sync_grads`` (default: :mod:`mslc.dist`), so θ and w stay
    identical on every rank. ``amp``: the precision of the model's passes.

    ``trusted = (x_t (k, ...), y_t (k,))``: clean samples trained on beside the batch, with
    their one-hot labels, in one forward with it and in the virtual step as in the real one
    (``mslc.trusted_passes``; the loss is the mean over all n + k rows, as GLC weights its
    trusted samples). Their rows are not corrected and not in the result.
    """
    if lagged and scope != "all":
        raise ValueError("the lagged step reuses the virtual step's gradient of every parameter: it needs scope='all'")
    n = len(y)
    fixed = None
    if trusted is not None:
        x = torch.cat([x, trusted[0]])
    with phase("step/forward"):
        logits = amp.forward(model, x)  # the one real forward: batch-norm statistics move once
        y_hat = F.softmax(logits[:n].detach(), dim=1)
    if trusted is not None:
        fixed = trusted_targets(trusted[1], logits.shape[1], y_hat.dtype)
    meta_loss = torch.tensor(float("nan"))
    reuse = [] if lagged and meta_update else None
    if reuse is not None:
        with torch.no_grad():
            targets, soft, alpha, beta = batch_targets(corrector, logits, y, y_prev, fixed)
    if meta_update:
        theta_grads, meta_loss = meta_gradient(
            model,
            corrector,
            logits,
            y,
            y_prev,
            x_meta,
            y_meta,
            lr_virtual=lr_virtual,
            mode=meta_grad,
            scope=scope,
            impl=impl,
            x=x,
            amp=amp,
            training_grad=reuse,
            fixed=fixed,
        )
        with phase("step/theta"):
            amp.set_grads([p for p in corrector.parameters() if p.requires_grad], theta_grads)
            amp.step(opt_theta)
        meta_loss = amp.skipped_as_nan(meta_loss)
    if reuse is None:
        with torch.no_grad():
            targets, soft, alpha, beta = batch_targets(corrector, logits, y, y_prev, fixed)
        loss = real_step(model, soft_cross_entropy(logits, targets), opt_w=opt_w, sync_grads=sync_grads, amp=amp)
    else:
        loss = real_step(model, soft_cross_entropy(logits.detach(), targets), opt_w=opt_w, amp=amp, grads=reuse)
    return StepResult(loss, meta_loss, y_hat, soft, alpha, beta)


def ce_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    opt_w: torch.optim.Optimizer,
    sync_grads: Callable[[nn.Module], None] | None = None,
    amp: Amp = FP32,
) -> StepResult:
    """A plain cross-entropy step on the given labels ``y`` (n,) (warm-up and the CE baseline)."""
    with phase("step/forward"):
        logits = amp.forward(model, x)
    loss = real_step(model, F.cross_entropy(logits, y), opt_w=opt_w, sync_grads=sync_grads, amp=amp)
    y_hat = F.softmax(logits.detach(), dim=1)
    onehot = F.one_hot(y, logits.shape[1]).to(y_hat.dtype)
    return StepResult(loss, torch.tensor(float("nan")), y_hat, onehot)
