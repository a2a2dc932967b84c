"""The per-sample soft-label bank: ŷ (latest prediction) and ỹ (latest soft label).

:class:`SoftLabelBank` is the interface a training loop uses; :class:`LocalBank`
keeps every row in one process. A sharded bank for multi-worker runs implements
the same interface.

Refresh policies
----------------
``step``  – a row written is read back at once (the paper's Algorithm 1).
``epoch`` – reads during an epoch see the rows as they were at its start; writes
            become visible after :meth:`end_epoch` (the authors' code).

Rows that are never visited keep their last value (initially the one-hot given
label): no row is ever zero.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
import torch.nn.functional as F

REFRESH_POLICIES = ("epoch", "step")


class SoftLabelBank(ABC):
    """Rows by sample index ``0..N-1``; each row is a distribution over C classes."""

    num_samples: int
    num_classes: int

    @abstractmethod
    def rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``idx`` (n,) int64 → ``(y_hat (n, C), y_prev (n, C))`` float32."""

    @abstractmethod
    def put(
        self,
        idx: torch.Tensor,
        *,
        y_hat: torch.Tensor,
        y_tilde: torch.Tensor | None = None,
        alpha: torch.Tensor | None = None,
        beta: torch.Tensor | None = None,
    ) -> None:
        """Write the rows of a batch: (n, C) predictions, optionally (n, C) soft labels and (n,) α, β."""

    @abstractmethod
    def accumulate(self, idx: torch.Tensor, probs: torch.Tensor) -> None:
        """Add (n, C) warm-up predictions to the running per-sample mean."""

    @abstractmethod
    def finish_warmup(self) -> None:
        """Set ỹ of every row with accumulated predictions to their mean."""

    @abstractmethod
    def end_epoch(self) -> None:
        """Publish the epoch's writes (a no-op under the ``step`` policy)."""

    @abstractmethod
    def table(self) -> dict[str, np.ndarray]:
        """All rows: ``y_hat``, ``y_tilde`` (N, C) and ``alpha``, ``beta`` (N,) (NaN if unset)."""

    @abstractmethod
    def state_dict(self) -> dict: ...

    @abstractmethod
    def load_state_dict(self, state: dict) -> None: ...


class LocalBank(SoftLabelBank):
    """Every row in this process.

    Parameters
    ----------
    noisy_labels : (N,) int64
        Given labels; ŷ and ỹ start as their one-hots.
    num_classes : int
    refresh : ``'epoch'`` or ``'step'``
    dtype : torch.dtype
        Row storage (float32, or float16/bfloat16 to halve memory).
    """

    def __init__(
        self,
        noisy_labels: np.ndarray | torch.Tensor,
        num_classes: int,
        *,
        refresh: str = "epoch",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if refresh not in REFRESH_POLICIES:
            raise ValueError(f"refresh must be one of {REFRESH_POLICIES}, got {refresh!r}")
        y = torch.as_tensor(np.asarray(noisy_labels), dtype=torch.int64)
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"bank labels must be in 0..{num_classes - 1}")
        self.num_samples = int(y.numel())
        self.num_classes = num_classes
        self.refresh = refresh
        onehot = F.one_hot(y, num_classes).to(dtype)
        self.y_hat = onehot.clone()
        self.y_tilde = onehot.clone()
        self.y_prev = onehot.clone() if refresh == "epoch" else self.y_tilde
        self.alpha = torch.full((self.num_samples,), float("nan"))
        self.beta = torch.full((self.num_samples,), float("nan"))
        self.acc_sum = torch.zeros(self.num_samples, num_classes)
        self.acc_count = torch.zeros(self.num_samples, dtype=torch.int64)

    def _check(self, idx: torch.Tensor) -> torch.Tensor:
        idx = torch.as_tensor(idx, dtype=torch.int64).cpu()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_samples):
            raise IndexError(f"bank index outside 0..{self.num_samples - 1}")
        return idx

    def rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self._check(idx)
        return self.y_hat[idx].float(), self.y_prev[idx].float()

    def put(self, idx, *, y_hat, y_tilde=None, alpha=None, beta=None) -> None:
        idx = self._check(idx)
        self.y_hat[idx] = y_hat.detach().cpu().to(self.y_hat.dtype)
        if y_tilde is not None:
            self.y_tilde[idx] = y_tilde.detach().cpu().to(self.y_tilde.dtype)
        if alpha is not None:
            self.alpha[idx] = alpha.detach().cpu().float()
        if beta is not None:
            self.beta[idx] = beta.detach().cpu().float()

    def accumulate(self, idx: torch.Tensor, probs: torch.Tensor) -> None:
        idx = self._check(idx)
        self.acc_sum.index_add_(0, idx, probs.detach().cpu().float())
        self.acc_count.index_add_(0, idx, torch.ones_like(idx))

    def reset_accumulator(self) -> None:
        self.acc_sum.zero_()
        self.acc_count.zero_()

    def finish_warmup(self) -> None:
        seen = self.acc_count > 0
        mean = self.acc_sum[seen] / self.acc_count[seen].unsqueeze(1)
        self.y_tilde[seen] = mean.to(self.y_tilde.dtype)
        if self.refresh == "epoch":
            self.y_prev.copy_(self.y_tilde)
        self.reset_accumulator()

    def end_epoch(self) -> None:
        if self.refresh == "epoch":
            self.y_prev.copy_(self.y_tilde)

    def table(self) -> dict[str, np.ndarray]:
        return {
            "y_hat": self.y_hat.float().numpy(),
            "y_tilde": self.y_tilde.float().numpy(),
            "alpha": self.alpha.numpy(),
            "beta": self.beta.numpy(),
        }

    def state_dict(self) -> dict:
        state = {
            "refresh": self.refresh,
            "y_hat": self.y_hat.clone(),
            "y_tilde": self.y_tilde.clone(),
            "alpha": self.alpha.clone(),
            "beta": self.beta.clone(),
            "acc_sum": self.acc_sum.clone(),
            "acc_count": self.acc_count.clone(),
        }
        if self.refresh == "epoch":
            state["y_prev"] = self.y_prev.clone()
        return state

    def load_state_dict(self, state: dict) -> None:
        if state["refresh"] != self.refresh:
            raise ValueError(f"bank state has refresh={state['refresh']!r}, this bank {self.refresh!r}")
        if tuple(state["y_tilde"].shape) != (self.num_samples, self.num_classes):
            raise ValueError(
                f"bank state has shape {tuple(state['y_tilde'].shape)}, "
                f"expected {(self.num_samples, self.num_classes)}"
            )
        for name in ("y_hat", "y_tilde", "alpha", "beta", "acc_sum", "acc_count"):
            getattr(self, name).copy_(state[name])
        if self.refresh == "epoch":
            self.y_prev.copy_(state["y_prev"])
