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
import torch.distributed as tdist
import torch.nn.functional as F

from mslc import dist as mdist
from mslc.options import REFRESH_POLICIES  # noqa: F401  (re-exported: the names live there, torch-free)


class SoftLabelBank(ABC):
    """Rows by sample index ``0..N-1``; each row is a distribution over C classes."""

    num_samples: int
    num_classes: int

    @abstractmethod
    def rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``idx`` (n,) int64 → ``(y_hat (n, C), y_prev (n, C))`` float32."""

    def prev(self, idx: torch.Tensor) -> torch.Tensor:
        """``idx`` (n,) int64 → ``y_prev`` (n, C) float32, the soft labels a step trains on
        (all that a step reads: a sharded bank moves only these)."""
        return self.rows(idx)[1]

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


def checked_index(idx, num_samples: int) -> torch.Tensor:
    """``idx`` as int64, checked against ``0..num_samples-1`` where it is on the host (the
    loader's indices; checking one on a GPU would wait for it)."""
    idx = torch.as_tensor(idx, dtype=torch.int64)
    if idx.device.type == "cpu" and idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= num_samples):
        raise IndexError(f"bank index outside 0..{num_samples - 1}")
    return idx


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
    device : torch.device
        Where the rows live: the model's device, so that reads and writes in a step never
        wait on a copy to the host (``table`` and ``state_dict`` give CPU arrays).
    """

    def __init__(
        self,
        noisy_labels: np.ndarray | torch.Tensor,
        num_classes: int,
        *,
        refresh: str = "epoch",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if refresh not in REFRESH_POLICIES:
            raise ValueError(f"refresh must be one of {REFRESH_POLICIES}, got {refresh!r}")
        y = torch.as_tensor(np.asarray(noisy_labels), dtype=torch.int64)
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"bank labels must be in 0..{num_classes - 1}")
        self.num_samples = int(y.numel())
        self.num_classes = num_classes
        self.refresh = refresh
        self.device = torch.device(device)
        onehot = F.one_hot(y, num_classes).to(dtype=dtype, device=self.device)
        self.y_hat = onehot.clone()
        self.y_tilde = onehot.clone()
        self.y_prev = onehot.clone() if refresh == "epoch" else self.y_tilde
        self.alpha = torch.full((self.num_samples,), float("nan"), device=self.device)
        self.beta = torch.full((self.num_samples,), float("nan"), device=self.device)
        self.acc_sum = torch.zeros(self.num_samples, num_classes, device=self.device)
        self.acc_count = torch.zeros(self.num_samples, dtype=torch.int64, device=self.device)

    def _check(self, idx: torch.Tensor) -> torch.Tensor:
        """``idx`` checked (:func:`checked_index`), on the rows' device."""
        return checked_index(idx, self.num_samples).to(self.device, non_blocking=True)

    def rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self._check(idx)
        return self.y_hat[idx].float(), self.y_prev[idx].float()

    def prev(self, idx: torch.Tensor) -> torch.Tensor:
        return self.y_prev[self._check(idx)].float()

    def _rows_in(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return t.detach().to(device=self.device, dtype=dtype)

    def put(self, idx, *, y_hat, y_tilde=None, alpha=None, beta=None) -> None:
        idx = self._check(idx)
        self.y_hat[idx] = self._rows_in(y_hat, self.y_hat.dtype)
        if y_tilde is not None:
            self.y_tilde[idx] = self._rows_in(y_tilde, self.y_tilde.dtype)
        if alpha is not None:
            self.alpha[idx] = self._rows_in(alpha, torch.float32)
        if beta is not None:
            self.beta[idx] = self._rows_in(beta, torch.float32)

    def accumulate(self, idx: torch.Tensor, probs: torch.Tensor) -> None:
        idx = self._check(idx)
        self.acc_sum.index_add_(0, idx, self._rows_in(probs, torch.float32))
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
            "y_hat": self.y_hat.float().cpu().numpy(),
            "y_tilde": self.y_tilde.float().cpu().numpy(),
            "alpha": self.alpha.cpu().numpy(),
            "beta": self.beta.cpu().numpy(),
        }

    def state_dict(self) -> dict:
        """CPU copies (a checkpoint loads on any device)."""
        state = {
            "refresh": self.refresh,
            "y_hat": self.y_hat.cpu().clone(),
            "y_tilde": self.y_tilde.cpu().clone(),
            "alpha": self.alpha.cpu().clone(),
            "beta": self.beta.cpu().clone(),
            "acc_sum": self.acc_sum.cpu().clone(),
            "acc_count": self.acc_count.cpu().clone(),
        }
        if self.refresh == "epoch":
            state["y_prev"] = self.y_prev.cpu().clone()
        return state

    def load_state_dict(self, state: dict) -> None:
        if state["refresh"] != self.refresh:
            raise ValueError(f"bank state has refresh={state['refresh']!r}, this bank {self.refresh!r}")
        if tuple(state["y_tilde"].shape) != (self.num_samples, self.num_classes):
            raise ValueError(
                f"bank state has shape {tuple(state['y_tilde'].shape)}, expected {(self.num_samples, self.num_classes)}"
            )
        for name in ("y_hat", "y_tilde", "alpha", "beta", "acc_sum", "acc_count"):
            getattr(self, name).copy_(state[name])
        if self.refresh == "epoch":
            self.y_prev.copy_(state["y_prev"])


class ShardedBank(SoftLabelBank):
    """The bank split over the ranks of ``torch.distributed``: row ``i`` lives on rank
    ``i mod W`` at local position ``i // W`` (so each rank holds ``ceil(N / W)`` rows or
    fewer), in a :class:`LocalBank` of its own.

    Every method is collective: all ranks call it together, each with its own batch.

    Traffic. A step reads only ỹ_prev (:meth:`prev`): the batch's indices go to their
    owners and the rows come back, through all-to-all exchanges (or paired sends and
    receives, ``exchange='p2p'``) after a small exchange of row counts on the host, so a
    rank sends about ``n`` indices and receives ``n·C`` values whatever W is. Writes
    (:meth:`put`, :meth:`accumulate`) are sent to their owners at once under the ``step``
    policy; under ``epoch``, where nothing reads them before the epoch ends, they stay in
    this rank's log and go out in one exchange at :meth:`end_epoch` (or when a table, a
    state or :meth:`rows` is asked for). Writes to one row apply in the order they were
    made (put by put, ranks in order within one).

    ``state_dict`` gathers the whole bank in :class:`LocalBank`'s format and
    ``load_state_dict`` keeps this rank's rows, so a checkpoint loads at any world size,
    or into a :class:`LocalBank`. ``bytes_moved`` and ``collectives`` count what this
    rank sent to other ranks and the collectives it joined (for benchmarks).
    """

    def __init__(
        self,
        noisy_labels,
        num_classes: int,
        *,
        refresh: str = "epoch",
        dtype=torch.float32,
        device: torch.device | str = "cpu",
        exchange: str = "all_to_all",
    ) -> None:
        if exchange not in ("all_to_all", "p2p"):
            raise ValueError(f"exchange must be 'all_to_all' or 'p2p', got {exchange!r}")
        labels = np.asarray(noisy_labels)
        self.exchange = exchange
        self.rank, self.world = mdist.rank(), mdist.world_size()
        self.num_samples, self.num_classes, self.refresh = len(labels), num_classes, refresh
        self.local = LocalBank(
            labels[self.rank :: self.world], num_classes, refresh=refresh, dtype=dtype, device=device
        )
        self.group = mdist.cpu_group()  # row counts travel on the host
        self.puts: list[tuple[torch.Tensor, torch.Tensor]] = []  # (idx, payload): the epoch policy's log
        self.accs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.seq = 0  # puts so far: the order of writes
        self.bytes_moved = 0
        self.collectives = 0

    # -- moving rows ------------------------------------------------------
    def _check(self, idx) -> torch.Tensor:
        return checked_index(idx, self.num_samples)

    def _route(self, idx: torch.Tensor):
        """Send order and counts of a batch's rows by owner; the counts each owner receives."""
        idx_host = idx.cpu()  # the loader's indices are on the host already
        owner = idx_host % self.world
        order = torch.argsort(owner, stable=True)
        send = torch.bincount(owner, minlength=self.world)
        recv = mdist.exchange_counts(send, group=self.group)
        self.collectives += 1
        self.bytes_moved += 8 * (self.world - 1)
        return order, send.tolist(), recv.tolist()

    def _send(self, rows: torch.Tensor, send: list[int], recv: list[int]) -> torch.Tensor:
        dev = mdist.comm_device()
        self.collectives += 1
        self.bytes_moved += (sum(send) - send[self.rank]) * rows[0].numel() * rows.element_size() if len(rows) else 0
        return mdist.all_to_all_rows(rows.to(dev, non_blocking=True), send, recv, impl=self.exchange)

    def _fetch(self, idx: torch.Tensor, columns) -> torch.Tensor:
        """The rows ``columns(local positions)`` → (n, k) of ``idx`` from their owners, in ``idx``'s order."""
        idx = self._check(idx)
        order, send, recv = self._route(idx)
        asked = self._send(idx.cpu()[order], send, recv)  # the positions others want from this rank
        mine = columns(asked.to(self.local.device) // self.world)
        got = self._send(mine, recv, send)
        out = torch.empty_like(got)
        out[order.to(got.device, non_blocking=True)] = got
        return out.to(self.local.device)

    @staticmethod
    def _pack(idx: torch.Tensor, payload: torch.Tensor) -> torch.Tensor:
        """(n,) int64 and (n, k) float32 → (n, k + 2) float32, the index's bits in the last two
        columns (exchanges copy bytes, so they come back exact)."""
        return torch.cat([payload, idx.reshape(-1, 1).view(torch.float32)], 1)

    @staticmethod
    def _unpack(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rows[:, -2:].clone(memory_format=torch.contiguous_format).view(torch.int64).reshape(-1), rows[:, :-2]

    def _deliver(self, idx: torch.Tensor, payload: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Writes ``(idx, payload)`` to their owners → the ``(local positions, payload)`` this rank
        owns, in the order (source rank, then write) they were made."""
        idx = self._check(idx)
        order, send, recv = self._route(idx)
        packed = self._pack(idx.to(payload.device, non_blocking=True), payload)
        got = self._send(packed[order.to(payload.device, non_blocking=True)], send, recv)
        got_idx, got_payload = self._unpack(got)
        return got_idx.to(self.local.device) // self.world, got_payload.to(self.local.device)

    # -- applying writes ---------------------------------------------------
    def _apply_puts(self, pos: torch.Tensor, rows: torch.Tensor, *, ordered: bool = True) -> None:
        """Payload rows ``[y_hat C | y_tilde C | has ỹ | α | β]`` in the order they were written
        into the local bank: for each field the latest write that set it wins. ``ordered=False``
        (one put's rows, one per row: the ``step`` policy's hot path) writes them with no
        host synchronisation."""
        c = self.num_classes
        if not ordered:
            y = self.local.y_tilde
            y[pos] = torch.where(rows[:, 2 * c : 2 * c + 1] > 0, rows[:, c : 2 * c].to(y.dtype), y[pos])
            self.local.y_hat[pos] = rows[:, :c].to(self.local.y_hat.dtype)
            for k, target in ((2 * c + 1, self.local.alpha), (2 * c + 2, self.local.beta)):
                target[pos] = torch.where(torch.isnan(rows[:, k]), target[pos], rows[:, k])
            return
        c = self.num_classes
        fields = (
            (self.local.y_hat, slice(0, c), None),
            (self.local.y_tilde, slice(c, 2 * c), rows[:, 2 * c] > 0),
            (self.local.alpha, 2 * c + 1, ~torch.isnan(rows[:, 2 * c + 1])),
            (self.local.beta, 2 * c + 2, ~torch.isnan(rows[:, 2 * c + 2])),
        )
        for target, cols, valid in fields:
            p, v = (pos, rows[:, cols]) if valid is None else (pos[valid], rows[valid][:, cols])
            last = _last_occurrence(p)
            target[p[last]] = v[last].to(target.dtype)

    def flush(self) -> None:
        """Send the logged writes to their owners and apply them (collective)."""
        c = self.num_classes
        puts, accs, self.puts, self.accs = self.puts, self.accs, [], []
        dev = self.local.device
        idx = torch.cat([i for i, _ in puts]) if puts else torch.zeros(0, dtype=torch.int64)
        rows = torch.cat([r for _, r in puts]) if puts else torch.zeros(0, 2 * c + 4, device=dev)
        pos, got = self._deliver(idx, rows)
        if len(pos):  # in write order: by put (the last column), ranks in order within one
            order = torch.argsort(got[:, -1], stable=True)
            self._apply_puts(pos[order], got[order, :-1])
        idx = torch.cat([i for i, _ in accs]) if accs else torch.zeros(0, dtype=torch.int64)
        rows = torch.cat([r for _, r in accs]) if accs else torch.zeros(0, c, device=dev)
        pos, got = self._deliver(idx, rows)
        if len(pos):
            self.local.accumulate(pos, got)

    # -- the interface ----------------------------------------------------
    def prev(self, idx: torch.Tensor) -> torch.Tensor:
        return self._fetch(idx, lambda pos: self.local.y_prev[pos].float())

    def rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.flush()  # ŷ of this epoch's writes
        both = self._fetch(
            idx, lambda pos: torch.cat([self.local.y_hat[pos].float(), self.local.y_prev[pos].float()], 1)
        )
        return both[:, : self.num_classes], both[:, self.num_classes :]

    def put(self, idx, *, y_hat, y_tilde=None, alpha=None, beta=None) -> None:
        n = y_hat.shape[0]
        dev = self.local.device
        y_hat = y_hat.detach().to(device=dev, dtype=torch.float32)

        def col(v):
            return (
                torch.full((n, 1), float("nan"), device=dev)
                if v is None
                else v.detach().to(device=dev, dtype=torch.float32).reshape(-1, 1)
            )

        parts = [
            y_hat,
            y_hat if y_tilde is None else y_tilde.detach().to(device=dev, dtype=torch.float32),
            torch.full((n, 1), 0.0 if y_tilde is None else 1.0, device=dev),
            col(alpha),
            col(beta),
        ]
        idx = self._check(idx)
        if self.refresh == "epoch":  # nothing reads the writes before the epoch ends
            parts.append(torch.full((n, 1), float(self.seq), device=dev))
            self.puts.append((idx.cpu(), torch.cat(parts, 1)))
            self.seq += 1
            return
        pos, got = self._deliver(idx, torch.cat(parts, 1))
        self._apply_puts(pos, got, ordered=False)

    def accumulate(self, idx: torch.Tensor, probs: torch.Tensor) -> None:
        self.accs.append((self._check(idx).cpu(), probs.detach().to(device=self.local.device, dtype=torch.float32)))

    def finish_warmup(self) -> None:
        self.flush()
        self.local.finish_warmup()

    def end_epoch(self) -> None:
        self.flush()
        self.seq = 0
        self.local.end_epoch()

    def _gather_full(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's (n_local, ...) rows (on the CPU) → the full (N, ...) array, on every rank."""
        n_max = -(-self.num_samples // self.world)
        pad = torch.zeros((n_max - t.shape[0], *t.shape[1:]), dtype=t.dtype)
        mine = torch.cat([t, pad]).to(mdist.comm_device())
        if self.world > 1:
            parts = [torch.empty_like(mine) for _ in range(self.world)]
            tdist.all_gather(parts, mine)
            parts = torch.stack(parts).cpu()
        else:
            parts = mine.unsqueeze(0).cpu()
        full = torch.empty((self.num_samples, *t.shape[1:]), dtype=t.dtype)
        for r in range(self.world):
            count = len(range(r, self.num_samples, self.world))
            full[r :: self.world] = parts[r, :count]
        return full

    def table(self) -> dict[str, np.ndarray]:
        self.flush()
        return {k: self._gather_full(torch.from_numpy(v)).numpy() for k, v in self.local.table().items()}

    def state_dict(self) -> dict:
        self.flush()
        local = self.local.state_dict()
        return {k: (self._gather_full(v) if isinstance(v, torch.Tensor) else v) for k, v in local.items()}

    def load_state_dict(self, state: dict) -> None:
        mine = {k: (v[self.rank :: self.world] if isinstance(v, torch.Tensor) else v) for k, v in state.items()}
        if mine["y_tilde"].shape[0] != self.local.num_samples:
            raise ValueError(f"bank state has {state['y_tilde'].shape[0]} rows, expected {self.num_samples}")
        self.puts, self.accs, self.seq = [], [], 0
        self.local.load_state_dict(mine)


def _last_occurrence(pos: torch.Tensor) -> torch.Tensor:
    """Indices of the last occurrence of each distinct value of ``pos`` (m,)."""
    m = len(pos)
    rev = torch.flip(pos, [0])
    uniq, inverse = torch.unique(rev, return_inverse=True)
    first_in_rev = torch.full((len(uniq),), m, dtype=torch.int64, device=pos.device)
    first_in_rev.scatter_reduce_(0, inverse, torch.arange(m, device=pos.device), reduce="amin")
    return m - 1 - first_in_rev


def exchange_bytes(n: int, num_classes: int, world: int, *, refresh: str = "epoch") -> dict[str, float]:
    """Bytes one rank of ``world`` sends to the others per step through :class:`ShardedBank`,
    for ``n`` disjoint samples per rank whose owners are spread evenly (what the plan gives).

    ``read``: a step's :meth:`~ShardedBank.prev` (the row counts, the indices, the answered
    ỹ_prev rows); ``write``: a ``step``-policy :meth:`~ShardedBank.put` (counts, then
    ``[ŷ | ỹ | flag | α | β]`` rows and the index); ``epoch_end``: the ``epoch`` policy's
    writes (the same rows with their order) spread over the epoch's steps; ``total`` of
    the policy; ``bound``: ``total`` as W grows (only the share (W−1)/W of rows that live
    on other ranks travels, and 8·(W−1) bytes of counts, left out of the bound)."""

    def per_step(remote: float, counts: int) -> tuple[float, float, float, float]:
        read = counts + remote * n * 8 + remote * n * num_classes * 4
        write = counts + remote * n * (2 * num_classes + 3 + 2) * 4
        epoch_end = remote * n * (2 * num_classes + 4 + 2) * 4
        return read, write, epoch_end, read + (epoch_end if refresh == "epoch" else write)

    read, write, epoch_end, total = per_step((world - 1) / world, 8 * (world - 1))
    bound = per_step(1.0, 0)[3]
    return {"read": read, "write": write, "epoch_end": epoch_end, "total": total, "bound": bound}
