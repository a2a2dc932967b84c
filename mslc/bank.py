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

from mslc.dist import comm_device

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


class ShardedBank(SoftLabelBank):
    """The bank split over the ranks of ``torch.distributed``: row ``i`` lives on rank
    ``i mod W`` at local position ``i // W`` (so each rank holds ``ceil(N / W)`` rows or
    fewer), in a :class:`LocalBank` of its own.

    Every method is collective: all ranks call it, each with its own batch indices.
    ``rows`` all-gathers the requested indices, each owner fills in its rows and one
    sum all-reduce delivers them; ``put`` and ``accumulate`` all-gather indices and
    rows and each owner keeps its own. ``state_dict`` gathers the whole bank in
    :class:`LocalBank`'s format and ``load_state_dict`` keeps this rank's rows, so a
    checkpoint loads at any world size, or into a :class:`LocalBank`.
    """

    def __init__(self, noisy_labels, num_classes: int, *, refresh: str = "epoch", dtype=torch.float32) -> None:
        import torch.distributed as dist

        labels = np.asarray(noisy_labels)
        self.dist = dist
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.num_samples, self.num_classes, self.refresh = len(labels), num_classes, refresh
        self.local = LocalBank(labels[self.rank :: self.world], num_classes, refresh=refresh, dtype=dtype)
        self.bytes_moved = 0  # payload this rank sent into collectives, for benchmarks

    # -- collectives ------------------------------------------------------
    def _all_gather_padded(self, t: torch.Tensor, n_max: int, fill: float) -> torch.Tensor:
        """(n, ...) on every rank → (W, n_max, ...) with each rank's rows, padded with ``fill``."""
        pad = torch.full((n_max - t.shape[0], *t.shape[1:]), fill, dtype=t.dtype)
        mine = torch.cat([t, pad])
        if self.world == 1:
            return mine.unsqueeze(0)
        self.bytes_moved += mine.numel() * mine.element_size()
        dev = comm_device()
        out = [torch.empty((n_max, *t.shape[1:]), dtype=t.dtype, device=dev) for _ in range(self.world)]
        self.dist.all_gather(out, mine.to(dev))
        return torch.stack(out).cpu()

    def _max_len(self, n: int) -> int:
        if self.world == 1:
            return n
        t = torch.tensor([n], device=comm_device())
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return int(t.item())

    def _gather_writes(self, idx: torch.Tensor, payload: torch.Tensor):
        """All ranks' (idx, payload rows); yields the local positions and rows this rank owns."""
        idx = torch.as_tensor(idx, dtype=torch.int64).cpu()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_samples):
            raise IndexError(f"bank index outside 0..{self.num_samples - 1}")
        n_max = self._max_len(idx.numel())
        all_idx = self._all_gather_padded(idx, n_max, -1).reshape(-1)
        all_rows = self._all_gather_padded(payload.detach().cpu().float(), n_max, 0.0).reshape(-1, payload.shape[1])
        mine = (all_idx >= 0) & (all_idx % self.world == self.rank)
        return all_idx[mine] // self.world, all_rows[mine]

    # -- the interface ----------------------------------------------------
    def rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(idx, dtype=torch.int64).cpu()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_samples):
            raise IndexError(f"bank index outside 0..{self.num_samples - 1}")
        n, c = idx.numel(), self.num_classes
        n_max = self._max_len(n)
        req = self._all_gather_padded(idx, n_max, -1)  # (W, n_max)
        resp = torch.zeros(self.world, n_max, 2 * c)
        mine = (req >= 0) & (req % self.world == self.rank)
        if mine.any():
            y_hat, y_prev = self.local.rows(req[mine] // self.world)
            resp[mine] = torch.cat([y_hat, y_prev], 1)
        if self.world > 1:
            self.bytes_moved += resp.numel() * resp.element_size()
            resp = resp.to(comm_device())
            self.dist.all_reduce(resp)  # every row has exactly one owner
            resp = resp.cpu()
        out = resp[self.rank, :n]
        return out[:, :c], out[:, c:]

    def put(self, idx, *, y_hat, y_tilde=None, alpha=None, beta=None) -> None:
        n, c = y_hat.shape
        nan = torch.full((n, 1), float("nan"))
        has_tilde = torch.full((n, 1), 0.0 if y_tilde is None else 1.0)
        parts = [y_hat.detach().cpu().float(), (y_tilde if y_tilde is not None else y_hat).detach().cpu().float(),
                 has_tilde, nan if alpha is None else alpha.detach().cpu().float().reshape(-1, 1),
                 nan if beta is None else beta.detach().cpu().float().reshape(-1, 1)]
        pos, rows = self._gather_writes(idx, torch.cat(parts, 1))
        if pos.numel() == 0:
            return
        self.local.put(pos, y_hat=rows[:, :c])
        t = rows[:, 2 * c] > 0
        if t.any():
            self.local.y_tilde[pos[t]] = rows[t, c : 2 * c].to(self.local.y_tilde.dtype)
        for k, name in ((2 * c + 1, "alpha"), (2 * c + 2, "beta")):
            v = rows[:, k]
            ok = ~torch.isnan(v)
            getattr(self.local, name)[pos[ok]] = v[ok]

    def accumulate(self, idx: torch.Tensor, probs: torch.Tensor) -> None:
        pos, rows = self._gather_writes(idx, probs)
        if pos.numel():
            self.local.accumulate(pos, rows)

    def finish_warmup(self) -> None:
        self.local.finish_warmup()

    def end_epoch(self) -> None:
        self.local.end_epoch()

    def _gather_full(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's (n_local, ...) rows → the full (N, ...) array, on every rank."""
        n_max = -(-self.num_samples // self.world)
        parts = self._all_gather_padded(t, n_max, 0)
        full = torch.empty((self.num_samples, *t.shape[1:]), dtype=t.dtype)
        for r in range(self.world):
            count = len(range(r, self.num_samples, self.world))
            full[r :: self.world] = parts[r, :count]
        return full

    def table(self) -> dict[str, np.ndarray]:
        return {k: self._gather_full(torch.from_numpy(v)).numpy() for k, v in self.local.table().items()}

    def state_dict(self) -> dict:
        local = self.local.state_dict()
        return {k: (self._gather_full(v) if isinstance(v, torch.Tensor) else v) for k, v in local.items()}

    def load_state_dict(self, state: dict) -> None:
        mine = {k: (v[self.rank :: self.world] if isinstance(v, torch.Tensor) else v) for k, v in state.items()}
        if mine["y_tilde"].shape[0] != self.local.num_samples:
            raise ValueError(f"bank state has {state['y_tilde'].shape[0]} rows, expected {self.num_samples}")
        self.local.load_state_dict(mine)
