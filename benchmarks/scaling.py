"""Time per MSLC step at 1 and 2 workers (gloo on CPU), split into compute, bank sync
and gradient all-reduce; bytes the bank moves per step; bank memory per rank.

    python benchmarks/scaling.py [--workers 1 2] [--steps 20] [--rows 58000]

Each rank runs ``mslc_step`` on the default small CNN with synthetic 28×28 batches
(batch 128 per rank, meta batch 128: data loading is not measured) and a
:class:`ShardedBank` of ``--rows`` × 10 rows (Fashion-MNIST size), reading and writing
the batch's rows every step as training does. Writes ``benchmarks/results/scaling.md``
and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from common import publish  # benchmarks/common.py, beside this script
from mslc import dist, meta_step
from mslc.bank import ShardedBank
from mslc.corrector import Corrector
from mslc.models import SmallCNN

RESULTS = ROOT / "benchmarks" / "results"
C, BATCH = 10, 128


class Timer:
    def __init__(self):
        self.total = 0.0

    def wrap(self, fn):
        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.total += time.perf_counter() - t

        return timed


def bank_bytes(bank: ShardedBank) -> int:
    local = bank.local
    ts = {id(t): t for t in (local.y_hat, local.y_tilde, local.y_prev, local.alpha, local.beta,
                             local.acc_sum, local.acc_count)}
    return sum(t.numel() * t.element_size() for t in ts.values())


def rank_main(rank: int, world: int, store: str, out: str, rows: int, steps: int, warm: int) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    reduce_t = Timer()
    dist.all_reduce_mean_ = reduce_t.wrap(dist.all_reduce_mean_)  # meta_step calls it through the module
    torch.manual_seed(0)
    model, corrector = SmallCNN(C, 1), Corrector()
    opt_w = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    opt_t = torch.optim.Adam(corrector.parameters(), lr=1e-3)
    bank = ShardedBank(torch.randint(0, C, (rows,)).numpy(), C)
    g = torch.Generator().manual_seed(rank)
    bank_t = 0.0
    for i in range(warm + steps):
        if i == warm:
            tdist.barrier()
            reduce_t.total, bank_t, bytes0, t0 = 0.0, 0.0, bank.bytes_moved, time.perf_counter()
        idx = torch.randint(0, rows, (BATCH,), generator=g)
        x, y = torch.randn(BATCH, 1, 28, 28, generator=g), torch.randint(0, C, (BATCH,), generator=g)
        xm, ym = torch.randn(BATCH, 1, 28, 28, generator=g), torch.randint(0, C, (BATCH,), generator=g)
        tb = time.perf_counter()
        _, y_prev = bank.rows(idx)
        bank_t += time.perf_counter() - tb
        res = meta_step.mslc_step(model, corrector, x, y, y_prev, xm, ym, opt_w=opt_w, opt_theta=opt_t,
                                  lr_virtual=0.05)
        tb = time.perf_counter()
        bank.put(idx, y_hat=res.y_hat, y_tilde=res.soft, alpha=res.alpha, beta=res.beta)
        bank_t += time.perf_counter() - tb
    total = time.perf_counter() - t0
    result = {"rank": rank, "step_ms": 1000 * total / steps, "bank_ms": 1000 * bank_t / steps,
              "allreduce_ms": 1000 * reduce_t.total / steps,
              "compute_ms": 1000 * (total - bank_t - reduce_t.total) / steps,
              "bank_bytes_per_step": (bank.bytes_moved - bytes0) / steps,
              "bank_rows_per_rank": bank.local.num_samples, "bank_memory_bytes": bank_bytes(bank),
              "threads": torch.get_num_threads()}
    Path(f"{out}.{rank}").write_text(json.dumps(result))
    tdist.destroy_process_group()


def measure(world: int, rows: int, steps: int, warm: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        store, out = f"{tmp}/store", f"{tmp}/out"
        mp.spawn(rank_main, args=(world, store, out, rows, steps, warm), nprocs=world, join=True)
        ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(world)]
    mean = {k: sum(r[k] for r in ranks) / world for k in ranks[0] if k != "rank"}
    mean["bank_rows_per_rank"] = max(r["bank_rows_per_rank"] for r in ranks)
    mean["bank_memory_bytes"] = max(r["bank_memory_bytes"] for r in ranks)
    return {"workers": world, **mean, "bank_share": mean["bank_ms"] / mean["step_ms"],
            "samples_per_s": world * BATCH / (mean["step_ms"] / 1000)}


def markdown(rows: list[dict], command: str) -> str:
    out = ["# MSLC step scaling on CPU (gloo)", "", f"Command: `{command}`  ",
           f"Synthetic 28×28 batches of {BATCH} per rank (meta batch {BATCH}), small CNN, sharded bank of "
           f"{rows[0]['rows']} × {C} float32 rows; times are per step, mean over ranks; 2 CPU cores shared by all "
           "ranks (threads per rank shown). Bank bytes: payload this rank puts into collectives per step.", "",
           "| workers | threads/rank | step ms | compute ms | bank sync ms | grad all-reduce ms | bank share "
           "| bank bytes/step/rank | bank rows/rank | bank memory/rank | samples/s |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['workers']} | {r['threads']:.0f} | {r['step_ms']:.1f} | {r['compute_ms']:.1f} | "
                   f"{r['bank_ms']:.2f} | {r['allreduce_ms']:.2f} | {100 * r['bank_share']:.2f}% | "
                   f"{r['bank_bytes_per_step'] / 1024:.1f} KiB | {r['bank_rows_per_rank']:.0f} | "
                   f"{r['bank_memory_bytes'] / 2**20:.2f} MiB | {r['samples_per_s']:.0f} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--rows", type=int, default=58000)
    p.add_argument("--out", default=str(RESULTS / "scaling"))
    a = p.parse_args(argv)
    rows = [{**measure(w, a.rows, a.steps, a.warmup_steps), "rows": a.rows} for w in a.workers]
    command = "python benchmarks/scaling.py " + " ".join(argv if argv is not None else sys.argv[1:])
    publish(a.out, markdown(rows, command), {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
