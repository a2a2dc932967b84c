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


def comm_device() -> torch.device:
    """Where collective buffers must live: the current GPU under NCCL, else the CPU."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_mean_(tensors: Iterable[torch.Tensor]) -> None:
    """Average tensors across ranks in place (one flattened all-reduce)."""
    if not is_distributed():
        return
    ts = [t for t in tensors if t is not None]
    if not ts:
        return
    flat = torch.cat([t.reshape(-1).to(comm_device()) for t in ts])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for t in ts:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t).to(t.device))
        offset += n


def average_gradients_(params: Iterable[torch.nn.Parameter]) -> None:
    """Average ``.grad`` of the given parameters across ranks (no-op alone)."""
    all_reduce_mean_(p.grad for p in params if p.grad is not None)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_min(value: int) -> int:
    """The smallest of the ranks' integers (``value`` alone)."""
    if not is_distributed():
        return value
    t = torch.tensor([value], device=comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def all_max_(t: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``t`` across ranks, in place (``t`` alone)."""
    if is_distributed():
        buf = t.to(comm_device())
        dist.all_reduce(buf, op=dist.ReduceOp.MAX)
        t.copy_(buf.to(t.device))
    return t


def all_gather_object(obj) -> list:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` alone). Not for the hot path."""
    if not is_distributed():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def average_buffers_(module: torch.nn.Module) -> None:
    """Average ``module``'s floating-point buffers (batch-norm running statistics) across
    ranks in place; integer buffers (``num_batches_tracked``) agree already. Only gradients
    are averaged per step, so without this each rank's statistics drift apart."""
    all_reduce_mean_(b for b in module.buffers() if b.is_floating_point())
