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


_CPU_GROUPS: dict = {}


def cpu_group():
    """A gloo group of all ranks for small host-side metadata (row counts), so that reading
    them does not wait on a GPU stream; the default group when that is gloo already.
    Collective the first time (every rank must call it)."""
    if not is_distributed() or dist.get_backend() == "gloo":
        return None
    key = id(dist.group.WORLD)
    if key not in _CPU_GROUPS:
        _CPU_GROUPS[key] = dist.new_group(backend="gloo")
    return _CPU_GROUPS[key]


def exchange_counts(send: torch.Tensor, *, group=None) -> torch.Tensor:
    """``send`` (W,) int64 on the CPU, the rows this rank sends to each rank → (W,) the rows
    each rank sends to this one."""
    if not is_distributed():
        return send.clone()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return recv


def all_to_all_rows(
    rows: torch.Tensor,
    send: list[int],
    recv: list[int],
    *,
    impl: str = "all_to_all",
) -> torch.Tensor:
    """Rows grouped by destination rank (``send[r]`` rows for rank ``r``, in rank order) →
    the rows the others sent to this rank (``recv[r]`` from rank ``r``, in rank order).

    ``impl``: ``all_to_all`` (one ``all_to_all_single``: NCCL, gloo) or ``p2p`` (paired
    sends and receives, for a backend without all-to-all). ``rows`` must be on
    :func:`comm_device`."""
    if not is_distributed():
        return rows
    out = torch.empty((sum(recv), *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
    if impl == "all_to_all":
        dist.all_to_all_single(out, rows, output_split_sizes=recv, input_split_sizes=send)
        return out
    if impl != "p2p":
        raise ValueError(f"impl must be 'all_to_all' or 'p2p', got {impl!r}")
    me = dist.get_rank()
    s_at, r_at = [0], [0]
    for a, b in zip(send, recv):
        s_at.append(s_at[-1] + a)
        r_at.append(r_at[-1] + b)
    out[r_at[me] : r_at[me + 1]] = rows[s_at[me] : s_at[me + 1]]
    ops = []
    for peer in range(len(send)):
        if peer != me and send[peer]:
            ops.append(dist.P2POp(dist.isend, rows[s_at[peer] : s_at[peer + 1]].contiguous(), peer))
        if peer != me and recv[peer]:
            ops.append(dist.P2POp(dist.irecv, out[r_at[peer] : r_at[peer + 1]], peer))
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()
    return out


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
