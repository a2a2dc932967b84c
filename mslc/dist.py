"""Collective helpers over ``torch.distributed``; every one is a no-op at world size 1."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def all_reduce_mean_(tensors: Iterable[torch.Tensor]) -> None:
    """Average tensors across ranks in place (one flattened all-reduce)."""
    if not is_distributed():
        return
    ts = [t for t in tensors if t is not None]
    if not ts:
        return
    flat = torch.cat([t.reshape(-1) for t in ts])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for t in ts:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n


def average_gradients_(params: Iterable[torch.nn.Parameter]) -> None:
    """Average ``.grad`` of the given parameters across ranks (no-op alone)."""
    all_reduce_mean_(p.grad for p in params if p.grad is not None)
