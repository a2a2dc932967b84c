"""Run a function in W gloo processes (no Ray) and collect what each rank returns.

A rank counts as done when it has written its result, which happens only after the
function returned; the results are what the tests compare."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sys
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


def _failing_entry(rank: int, world: int, store: str, err_file: str, fn, args) -> None:
    fd = os.open(err_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 2)  # this rank's stderr, for the test to read
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    import torch

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    except BaseException:
        # As a Ray Train worker actor does, the process outlives its training function's
        # error (its connections stay open) until something stops it: here HOLD_S seconds.
        import time
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        time.sleep(HOLD_S)
        os._exit(1)
    dist.barrier()
    dist.destroy_process_group()


HOLD_S = 15


def run_ranks_to_exit(fn, world: int, tmp_path: Path, *args, timeout: float = 300) -> list[dict]:
    """``fn(rank, world, *args)`` in ``world`` spawned gloo processes that may fail; a rank
    whose ``fn`` raises prints the traceback and lives on for :data:`HOLD_S` seconds before it
    exits with status 1. Per rank: its ``exitcode`` (None if it was still running at
    ``timeout`` and was killed), the ``stderr`` it wrote, and ``ended``, the ``time.time()``
    its exit was seen (to 0.1 s)."""
    import time

    tmp_path.mkdir(parents=True, exist_ok=True)
    ctx = multiprocessing.get_context("spawn")
    errs = [tmp_path / f"stderr.{r}" for r in range(world)]
    procs = [
        ctx.Process(target=_failing_entry, args=(r, world, str(tmp_path / "pg-store"), str(errs[r]), fn, args))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    ended: list[float | None] = [None] * world
    deadline = time.time() + timeout
    while time.time() < deadline and any(e is None for e in ended):
        for r, p in enumerate(procs):
            if ended[r] is None and not p.is_alive():
                ended[r] = time.time()
        time.sleep(0.1)
    out = []
    for r, p in enumerate(procs):
        if p.is_alive():
            p.kill()
            p.join()
            out.append({"exitcode": None, "stderr": errs[r].read_text(errors="replace"), "ended": None})
        else:
            out.append({"exitcode": p.exitcode, "stderr": errs[r].read_text(errors="replace"), "ended": ended[r]})
    return out
