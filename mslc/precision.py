"""Mixed precision for the classifier's passes, and nothing else.

The model's forward passes (the real one, the look-ahead's meta forward, the
forward-mode product) run under ``torch.autocast`` in bf16 or fp16; their logits come
back as fp32, so every loss, the corrector, the soft labels and the bank are fp32, as
are the master weights and the optimizer states (autocast casts copies). fp16 adds
loss scaling (``torch.amp.GradScaler``): the real step's loss, the θ-gradient's inner
gradients (scaled, then unscaled inside the graph) and the corrector's update go
through one scaler, whose step skips an optimizer update with non-finite gradients.

    amp = Amp.build("bf16", torch.device("cuda"))
    logits = amp.forward(model, x)      # autocast forward, fp32 logits
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mslc.options import PRECISIONS  # noqa: F401  (re-exported: the names live there, torch-free)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` → ``bf16`` on a CUDA device with native bf16 (Ampere and later), ``fp16`` (with
    loss scaling) on an older CUDA device, where bf16 would only be emulated, slower than fp32;
    ``fp32`` on the CPU. An explicit name is returned as it is."""
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {name!r}")
    if name != "auto":
        return name
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"


@dataclass
class Amp:
    """How the classifier's passes run: ``precision`` (bf16 | fp16 | fp32) on
    ``device_type``, and for fp16 the loss scaler. ``Amp()`` is plain fp32."""

    precision: str = "fp32"
    device_type: str = "cpu"
    scaler: torch.amp.GradScaler | None = None

    @classmethod
    def build(cls, precision: str, device: torch.device) -> Amp:
        p = resolve_precision(precision, device)
        scaler = torch.amp.GradScaler(device.type) if p == "fp16" else None
        return cls(p, device.type, scaler)

    @property
    def dtype(self) -> torch.dtype | None:
        return DTYPES[self.precision]

    def autocast(self):
        """The context the model's forward passes run in (a no-op for fp32)."""
        return torch.autocast(self.device_type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def forward(self, fn: Callable[..., torch.Tensor], *args) -> torch.Tensor:
        """``fn(*args)`` under :meth:`autocast`, its output as fp32."""
        if self.dtype is None:
            return fn(*args)
        with self.autocast():
            out = fn(*args)
        return out.float()

    # ------------------------------------------------------------- loss scaling (fp16)

    def _scale(self, device: torch.device) -> torch.Tensor:
        """The current loss scale as a () tensor on ``device`` (no host read)."""
        return self.scaler.scale(torch.ones((), device=device))

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss`` times the current loss scale (itself unless fp16)."""
        return loss if self.scaler is None else self.scaler.scale(loss)

    def grad(self, loss: torch.Tensor, inputs: Sequence[torch.Tensor], **kw) -> tuple[torch.Tensor, ...]:
        """``torch.autograd.grad(loss, inputs, **kw)`` with the loss scaled and the
        gradients unscaled again (inside the graph when ``create_graph``)."""
        if self.scaler is None:
            return torch.autograd.grad(loss, inputs, **kw)
        s = self._scale(loss.device)
        return tuple(None if g is None else g / s for g in torch.autograd.grad(loss * s, inputs, **kw))

    def set_grads(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
        """``p.grad = g`` for unscaled ``grads``, in the scale :meth:`step` expects."""
        s = None if self.scaler is None else self._scale(grads[0].device)
        for p, g in zip(params, grads):
            p.grad = g if s is None else g * s

    def step(self, opt: torch.optim.Optimizer) -> None:
        """``opt.step()``; fp16: unscale, and skip the update if a gradient is not finite."""
        if self.scaler is None:
            opt.step()
        else:
            self.scaler.step(opt)

    def skipped_as_nan(self, meta_loss: torch.Tensor) -> torch.Tensor:
        """fp16: a non-finite meta loss (an overflow the scaler skips and recovers from) as
        NaN, "no meta step", rather than as divergence; other precisions: as it is."""
        if self.scaler is None:
            return meta_loss
        return torch.where(torch.isfinite(meta_loss), meta_loss, torch.full_like(meta_loss, float("nan")))

    def update(self) -> None:
        """After a step's last optimizer update: fp16 adjusts the loss scale."""
        if self.scaler is not None:
            self.scaler.update()

    def state_dict(self) -> dict:
        return {} if self.scaler is None else {"scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


FP32 = Amp()
