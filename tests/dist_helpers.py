"""Run a function in W gloo processes (no Ray) and collect what each rank returns."""

from __future__ import annotations

import multiprocessing
import os
import pickle
from pathlib import Path

# pyarrow before torch in every child: children that imported torch first and then
# pyarrow (via the test module) aborted now and then with no Python frame.
import pyarrow  # noqa: F401, E402  isort: skip
import torch.distributed as dist  # noqa: E402


def _entry(rank: int, world: int, store: str, out: str, fn, args) -> None:
    import faulthandler

    faulthandler.enable()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback: no dependence on the host's interfaces
    import torch

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
        with open(f"{out}.{rank}", "wb") as f:
            pickle.dump(result, f)  # test-only results this test itself wrote
    finally:
        dist.destroy_process_group()


def run_ranks(fn, world: int, tmp_path: Path, *args, timeout: float = 600) -> list:
    """``fn(rank, world, *args)`` in ``world`` spawned processes; returns their results by rank."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    store, out = tmp_path / "pg-store", tmp_path / "result"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_entry, args=(r, world, str(store), str(out), fn, args)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    if any(c != 0 for c in codes):
        raise RuntimeError(f"rank processes exited with codes {codes}")
    results = []
    for r in range(world):
        with open(f"{out}.{r}", "rb") as f:
            results.append(pickle.load(f))
    return results
