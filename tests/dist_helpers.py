"""Run a function in W gloo processes (no Ray) and collect what each rank returns."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, world: int, store: str, out: str, fn, args) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
        with open(f"{out}.{rank}", "wb") as f:
            pickle.dump(result, f)  # test-only results this test itself wrote
    finally:
        dist.destroy_process_group()


def run_ranks(fn, world: int, tmp_path: Path, *args) -> list:
    """``fn(rank, world, *args)`` in ``world`` processes; returns their results by rank."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    store, out = tmp_path / "pg-store", tmp_path / "result"
    mp.spawn(_entry, args=(world, str(store), str(out), fn, args), nprocs=world, join=True)
    results = []
    for r in range(world):
        with open(f"{out}.{r}", "rb") as f:
            results.append(pickle.load(f))
    return results
