"""Run a function in W gloo processes (no Ray) and collect what each rank returns.

A rank counts as done when it has written its result, which happens only after the
function returned; the results are what the tests compare."""

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
    result = fn(rank, world, *args)
    with open(f"{out}.{rank}.tmp", "wb") as f:
        pickle.dump(result, f)  # test-only results this test itself wrote
    os.replace(f"{out}.{rank}.tmp", f"{out}.{rank}")
    dist.barrier()  # tear down together
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
    done = [Path(f"{out}.{r}").is_file() for r in range(world)]
    if not all(done):
        raise RuntimeError(f"rank processes exited with codes {codes}; finished: {done}")
    if any(c != 0 for c in codes):
        # Seen here now and then: gloo aborts a rank ('terminate called without an active
        # exception', no Python frame) while tearing down after its work and result were done.
        print(f"run_ranks: all ranks finished, but exit codes were {codes} at teardown")
    results = []
    for r in range(world):
        with open(f"{out}.{r}", "rb") as f:
            results.append(pickle.load(f))
    return results
