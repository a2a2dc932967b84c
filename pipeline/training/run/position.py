"""Where a run is inside an epoch: what a mid-epoch checkpoint records, when one is due,
and how an epoch resumes from it.

Every rank takes the same number of steps, so the place in the data is the epoch, the
step within it and the set of training samples already trained on (a (N,) mask, the
union over ranks). A run resumed by as many workers as saved it gives each rank back
its own random state, meta-set sampler and running sums, and its stream leaves out the
trained samples after the (seeded) shuffle: the remaining batches are the ones an
uninterrupted run would have taken, in its order (bit-identical on CPU with
``data.loader_workers=0``; with loader processes the batches interleave differently). A
run resumed by a different number of workers (an elastic resize) re-shards the bank from
the checkpoint and streams only the samples no rank had trained on this epoch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from mslc import dist
from pipeline.training.methods.state import rng_state, set_rng_state


@dataclass
class EpochMeans:
    """An epoch's means over every rank: ``train_loss`` per sample, ``meta_loss`` per meta
    sample (NaN when no step had one), ``samples`` per rank (rounded mean)."""

    train_loss: float
    meta_loss: float
    samples: int


@dataclass
class EpochTotals:
    """This rank's running sums over an epoch's steps, kept on the device so that a step
    needs no host sync; read once, at the epoch's end (:meth:`means`), or stored in a
    mid-epoch checkpoint (``sums``).

    sums : (3,) float64 — Σ training loss · n, Σ meta loss · n over the steps that had one,
    and the samples of those steps.
    """

    sums: torch.Tensor

    @classmethod
    def zeros(cls, device: torch.device) -> EpochTotals:
        return cls(torch.zeros(3, dtype=torch.float64, device=device))

    @property
    def loss_sum(self) -> torch.Tensor:
        """() Σ training loss · n so far (on the device)."""
        return self.sums[0]

    def add(self, loss: torch.Tensor, meta_loss: torch.Tensor, n: int) -> None:
        """One step of ``n`` samples: ``loss`` its mean training loss, ``meta_loss`` (float64,
        on the sums' device) its meta loss or NaN for a step without one."""
        has_meta = ~torch.isnan(meta_loss)
        self.sums += torch.stack(
            [loss.to(torch.float64) * n, torch.where(has_meta, meta_loss * n, 0.0), has_meta * float(n)]
        )

    def means(self, samples: int) -> EpochMeans:
        """The epoch's means over every rank (collective: every rank calls it once);
        ``samples``: this rank's samples of the epoch."""
        t = torch.cat([self.sums.cpu(), torch.tensor([float(samples)], dtype=torch.float64)])
        dist.all_reduce_mean_([t])
        loss_n, meta_n, meta_samples, n = (float(v) for v in t)
        n = round(n)
        return EpochMeans(
            train_loss=loss_n / n if n else float("nan"),
            meta_loss=meta_n / meta_samples if meta_samples else float("nan"),
            samples=n,
        )


@dataclass
class EpochStart:
    """What :func:`pipeline.training.run.loop.train_epoch` starts from.

    steps, n : this rank's steps and samples of the epoch already taken
    totals : this rank's running sums of the epoch, on the device
    seen : (N,) bool, samples trained on this epoch (any rank), or None without mid-epoch checkpoints
    """

    steps: int
    n: int
    totals: EpochTotals
    seen: np.ndarray | None


def meta_seed(seed: int, epoch: int, step: int = 0) -> int:
    """The meta-set sampler's seed for this rank's epoch (``step``: restarted there after a resize)."""
    return seed * 7919 + 1009 * dist.rank() + epoch + 104_729 * step


def reset_samplers(st, seed: int, epoch: int, step: int = 0) -> None:
    """Reseed the meta-set samplers for this rank's epoch: the meta loss's and, where there
    is one, the trusted samples' (its own seed, so the two draw independently)."""
    st.meta.reset(meta_seed(seed, epoch, step))
    if st.trusted is not None:
        st.trusted.reset(meta_seed(seed, epoch, step) + 15_485_863)


def fresh(num_samples: int, device: torch.device, *, track: bool) -> EpochStart:
    return EpochStart(0, 0, EpochTotals.zeros(device), np.zeros(num_samples, dtype=bool) if track else None)


def record(st, epoch: int, at: EpochStart, totals: EpochTotals) -> dict:
    """The position to store beside the state (collective: every rank calls it).

    ``at.steps`` and ``at.n`` are the counts so far; ``totals`` the running sums."""
    seen = torch.from_numpy(at.seen.astype(np.uint8))
    dist.all_max_(seen)
    ranks = dist.all_gather_object(
        {
            "rng": rng_state(),
            "meta": st.meta.state_dict(),
            "trusted": None if st.trusted is None else st.trusted.state_dict(),
            "totals": totals.sums.detach().cpu(),
            "n": at.n,
        }
    )
    return {
        "epoch": epoch,
        "step": at.steps,
        "world": dist.world_size(),
        "num_samples": len(at.seen),
        "seen": torch.from_numpy(np.packbits(seen.numpy().astype(bool))),
        "ranks": ranks,
    }


def restore(pos: dict, st, *, seed: int, device: torch.device) -> EpochStart:
    """This rank's :class:`EpochStart` from a recorded position: an exact continuation at
    the same number of workers, a re-split of the epoch's untrained samples after a resize."""
    n_all = pos["num_samples"]
    seen = np.unpackbits(pos["seen"].numpy(), count=n_all).astype(bool)
    world, rank = dist.world_size(), dist.rank()
    if pos["world"] == world:
        mine = pos["ranks"][rank]
        st.meta.load_state_dict(mine["meta"])
        if st.trusted is not None and mine.get("trusted") is not None:
            st.trusted.load_state_dict(mine["trusted"])
        set_rng_state(mine["rng"])
        return EpochStart(pos["step"], mine["n"], EpochTotals(mine["totals"].to(device)), seen)
    # a resize: rank 0 carries the old ranks' sums (the epoch's means only need their totals)
    reset_samplers(st, seed, pos["epoch"], pos["step"])
    totals = sum(r["totals"] for r in pos["ranks"]) if rank == 0 else torch.zeros(3, dtype=torch.float64)
    n = sum(r["n"] for r in pos["ranks"]) if rank == 0 else 0
    return EpochStart(pos["step"], n, EpochTotals(totals.to(device)), seen)


class CheckpointClock:
    """When a checkpoint is due inside an epoch: every ``run.checkpoint_every_steps`` steps
    of the run (the same step on every rank, no collective), or every
    ``run.checkpoint_every_min`` minutes by rank 0's clock, asked every ``check_every``
    steps through one small collective so that all ranks save together."""

    def __init__(self, every_steps: int, every_min: float, *, check_every: int) -> None:
        self.every_steps, self.every_s, self.check_every = every_steps, every_min * 60.0, check_every
        self.last = time.time()

    @property
    def enabled(self) -> bool:
        return self.every_steps > 0 or self.every_s > 0

    def due(self, steps_done: int, step_in_epoch: int) -> bool:
        if self.every_steps and steps_done % self.every_steps == 0:
            return True
        if self.every_s and step_in_epoch % self.check_every == 0:
            late = int(dist.rank() == 0 and time.time() - self.last >= self.every_s)
            return bool(dist.all_max_(torch.tensor([late]))[0])
        return False

    def saved(self) -> None:
        self.last = time.time()
