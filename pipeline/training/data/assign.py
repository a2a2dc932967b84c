"""Which rank reads which shards in an epoch, and how many steps every rank takes.

Each epoch the training shards are shuffled (seeded by the run's seed and the epoch, the
same on every rank) and laid end to end; rank ``r`` of ``W`` takes the samples at positions
``[r·U/W, (r+1)·U/W)`` of that sequence (``U``: the samples to train this epoch). So the
ranks' shares differ by at most one sample, each rank opens only the shards its share
touches (its whole shards and at most two that it shares with a neighbour), and reads at
most one shard more than its share (a part at a shard's end is read from the shard's
start; a part at its start stops early). Every rank takes the same number of steps,
computed here from the counts before any data is read, so no rank waits for another or
drains a stream.

The sample keys of a training shard are its indices, ascending and contiguous (``0..N-1``
in shard order), so a part of a shard is a key range.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from pipeline.errors import ShardError
from pipeline.shardset import shard_urls

SHARDS_PER_RANK_AIM = 10  # at or above this, a rank reads at most 1.1/W of the split's bytes


@dataclass(frozen=True)
class Part:
    """The samples of one shard with keys in ``[first, stop)``; the shard holds ``count``
    samples from key ``start``. Reading the part reads the shard from its start to ``stop``."""

    url: str
    start: int
    first: int
    stop: int
    count: int

    def read_share(self) -> float:
        """The share of the shard's bytes reading this part reads (pro rata by samples)."""
        return (self.stop - self.start) / self.count


@dataclass
class EpochPlan:
    """parts : per rank, its :class:`Part` s in reading order
    samples : per rank, the samples it trains this epoch
    steps : the steps every rank takes (a rank's last sample alone is not a step)"""

    parts: list[list[Part]]
    samples: list[int]
    steps: int

    def read_shares(self, sizes: dict[str, int]) -> list[float]:
        """Per rank, the share of the training split's bytes it reads (``sizes``: bytes by url)."""
        total = sum(sizes.values())
        return [sum(sizes[p.url] * p.read_share() for p in parts) / total for parts in self.parts]


def steps_for(samples: int, batch_size: int) -> int:
    """Steps of ``batch_size`` over ``samples``; a last batch of one sample is not a step
    (batch-norm cannot train on it)."""
    return samples // batch_size + (1 if samples % batch_size >= 2 else 0)


def shard_ranges(manifest: dict, split: str = "train") -> list[tuple[int, int]]:
    """``(first key, stop key)`` of each shard of ``split``, in manifest order."""
    out, start = [], 0
    for rec in manifest["splits"][split]["shards"]:
        out.append((start, start + rec["count"]))
        start += rec["count"]
    return out


def check_world(manifest: dict, world: int, *, shard_dir: str = "", log=None) -> None:
    """Too few training shards for ``world`` ranks: an error below one shard per rank (how to
    re-shard), a warning below :data:`SHARDS_PER_RANK_AIM` per rank."""
    shards = len(manifest["splits"]["train"]["shards"])
    n = manifest["splits"]["train"]["count"]
    if world <= 1:
        return
    size = max(1, n // (SHARDS_PER_RANK_AIM * world))
    how = (
        f"re-shard with `python pipeline/prepare.py ... --shard-size {size}` (or data.shard_size={size}) for "
        f"{SHARDS_PER_RANK_AIM} shards per worker"
    )
    where = f"{shard_dir}: " if shard_dir else ""
    if shards < world:
        raise ShardError(
            f"{where}the training split has {shards} shard(s), fewer than the {world} workers: each "
            f"worker reads whole shards of its own; {how}"
        )
    if shards < SHARDS_PER_RANK_AIM * world and log is not None:
        log(
            f"note: {shards} training shards for {world} workers ({shards / world:.1f} per worker): each reads up "
            f"to {1 + world / shards:.2f}/{world} of the split's bytes per epoch; {how}"
        )


def plan_epoch(
    manifest: dict, shard_dir: str, *, world: int, seed: int, batch_size: int, todo: np.ndarray | None = None
) -> EpochPlan:
    """The epoch's :class:`EpochPlan` over the training shards of ``manifest``.

    Parameters
    ----------
    seed : int
        The epoch's shuffle seed (the same on every rank).
    todo : (N,) bool, optional
        The samples still to train this epoch (after a resume at another worker count):
        the shares are balanced over these; by default all.
    """
    urls = shard_urls(shard_dir, manifest, "train")
    ranges = shard_ranges(manifest)
    order = list(range(len(urls)))
    random.Random(seed).shuffle(order)
    if todo is None:
        keys = [np.arange(*ranges[j]) for j in order]
    else:
        keys = [ranges[j][0] + np.flatnonzero(todo[ranges[j][0] : ranges[j][1]]) for j in order]
    total = sum(len(k) for k in keys)
    bounds = [total * r // world for r in range(world + 1)]
    parts: list[list[Part]] = [[] for _ in range(world)]
    pos = 0  # position of the shard's first todo sample in the sequence
    for j, k in zip(order, keys):
        for r in range(world):
            lo, hi = max(bounds[r], pos), min(bounds[r + 1], pos + len(k))
            if lo < hi:
                parts[r].append(
                    Part(urls[j], ranges[j][0], int(k[lo - pos]), int(k[hi - 1 - pos]) + 1, ranges[j][1] - ranges[j][0])
                )
        pos += len(k)
    samples = [bounds[r + 1] - bounds[r] for r in range(world)]
    return EpochPlan(parts, samples, min(steps_for(s, batch_size) for s in samples))
