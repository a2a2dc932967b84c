"""Data-parallel traffic at W = 1, 2, 4 gloo processes: bytes each rank reads from the shards
per epoch, the bank's bytes and the collectives per step per rank, the communication share
of the step; and the same figures on paper for clusters this machine cannot be.

    python benchmarks/scaling.py [--workers 1 2 4] [--steps 20] [--shard-size 1000]

Reads: the training split of Fashion-MNIST (58,000 images) written as ``--shard-size``-image
shards (``pipeline/prepare.py``'s code, cached under ``data/shards``); each rank streams
its parts of epoch 1's plan (:mod:`pipeline.training.data.assign`) through the training stream,
and the bytes its shard files give up are counted. Steps: each rank runs ``mslc_step`` on
the default small CNN with synthetic 28×28 batches of 128 (meta batch 128) over disjoint
sample indices, and a :class:`~mslc.bank.ShardedBank` of 58,000 × 10 rows (the ``epoch``
policy, the default, and ``step``), reading ỹ_prev and writing the batch's rows as the
loop does; the epoch's end exchange is counted per step over a 58,000-sample epoch.
Every collective is counted by wrapping ``torch.distributed``. The ranks share 2 CPU cores,
so times are reported as shares, not as speed. Writes ``benchmarks/results/scaling.md``
and ``.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# pyarrow (the shard manifest's label table) before torch in every process: the other order
# aborted gloo ranks now and then (see tests/dist_helpers.py)
import pyarrow  # noqa: F401, E402  isort: skip
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from common import publish  # benchmarks/common.py, beside this script

from mslc import meta_step
from mslc.bank import ShardedBank, exchange_bytes
from mslc.corrector import Corrector
from mslc.models import SmallCNN

RESULTS = ROOT / "benchmarks" / "results"
C, BATCH, ROWS = 10, 128, 58000
COLLECTIVES = ("all_reduce", "all_gather", "all_to_all_single", "batch_isend_irecv", "broadcast", "all_gather_object")
# On paper: (label, samples, classes, GPUs, batch per GPU)
PAPER = [
    ("Clothing1M (1M × 14), 8 GPUs", 1_000_000, 14, 8, 32),
    ("2.4M × 1,000 classes, 64 GPUs", 2_400_000, 1000, 64, 64),
]


def old_exchange_bytes(n: int, num_classes: int, world: int) -> float:
    """Bytes a rank sent per step through the bank exchange this one replaced (before
    issue 14): ``rows`` all-gathered the (n,) int64 indices and answered with a sum
    all-reduce of (W, n, 2C) float32; ``put`` all-gathered indices and (n, 2C + 3) rows;
    plus 2 length all-reduces. Ring all-reduce sends 2(W-1)/W of the buffer per rank."""
    if world == 1:
        return 0.0
    ring = 2 * (world - 1) / world
    return 8 * n + ring * world * n * 2 * num_classes * 4 + 8 * n + n * (2 * num_classes + 3) * 4 + 2 * ring * 8


class Counter:
    """Wraps ``torch.distributed``'s collectives: how many, and the seconds spent in them."""

    def __init__(self) -> None:
        self.calls, self.seconds = 0, 0.0
        for name in COLLECTIVES:
            setattr(tdist, name, self._wrap(getattr(tdist, name)))

    def _wrap(self, fn):
        @functools.wraps(fn)
        def counted(*a, **k):
            self.calls += 1
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.seconds += time.perf_counter() - t

        return counted


def read_epoch(shard_dir: str, rank: int, world: int) -> dict:
    """Stream this rank's parts of epoch 1 and count the bytes read from its shard files."""
    from pipeline import shardset
    from pipeline.training.data import assign, streaming

    m = shardset.load_manifest(shard_dir)
    plan = assign.plan_epoch(m, shard_dir, world=world, seed=1_000_003 + 1, batch_size=BATCH)
    read = [0]
    real = streaming.open_shard

    class Counting:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            data = self.f.read(n)
            read[0] += len(data)
            return data

        def close(self):
            self.f.close()

    streaming.open_shard = lambda url: Counting(real(url))
    samples = sum(
        1 for _ in streaming.stream(plan.parts[rank], num_classes=m["num_classes"], shuffle_seed=1, shuffle_buffer=0)
    )
    streaming.open_shard = real
    total = sum(r["bytes"] for r in m["splits"]["train"]["shards"])
    return {
        "bytes_read": read[0],
        "bytes_read_share": read[0] / total,
        "samples_streamed": samples,
        "samples_used": min(plan.steps * BATCH, samples),
        "train_samples": m["splits"]["train"]["count"],
        "shards": len(m["splits"]["train"]["shards"]),
        "steps_per_epoch": plan.steps,
    }


def steps(rank: int, world: int, refresh: str, n_steps: int, warm: int) -> dict:
    """``n_steps`` MSLC steps with a sharded bank; per step: bank bytes sent, collectives, times."""
    counter = Counter()
    torch.manual_seed(0)
    model, corrector = SmallCNN(C, 1), Corrector()
    opt_w = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    opt_t = torch.optim.Adam(corrector.parameters(), lr=1e-3)
    bank = ShardedBank(
        torch.randint(0, C, (ROWS,), generator=torch.Generator().manual_seed(0)).numpy(), C, refresh=refresh
    )
    perm = torch.randperm(ROWS, generator=torch.Generator().manual_seed(1))  # the same on every rank
    g = torch.Generator().manual_seed(100 + rank)
    for i in range(warm + n_steps):
        if i == warm:
            tdist.barrier()
            calls0, comm0, bytes0, t0 = counter.calls, counter.seconds, bank.bytes_moved, time.perf_counter()
        idx = perm[(i * world + rank) * BATCH : (i * world + rank + 1) * BATCH]  # disjoint across ranks, as in training
        x, y = torch.randn(BATCH, 1, 28, 28, generator=g), torch.randint(0, C, (BATCH,), generator=g)
        xm, ym = torch.randn(BATCH, 1, 28, 28, generator=g), torch.randint(0, C, (BATCH,), generator=g)
        y_prev = bank.prev(idx)
        res = meta_step.mslc_step(model, corrector, x, y, y_prev, xm, ym, opt_w=opt_w, opt_theta=opt_t, lr_virtual=0.05)
        bank.put(idx, y_hat=res.y_hat, y_tilde=res.soft, alpha=res.alpha, beta=res.beta)
    total = time.perf_counter() - t0
    calls, comm, step_bytes = counter.calls - calls0, counter.seconds - comm0, bank.bytes_moved - bytes0
    # the epoch's end: this rank's writes of a whole epoch (ROWS / world samples) to their owners
    epoch_steps = ROWS // (world * BATCH)
    bank.puts = bank.puts[-n_steps:] * (epoch_steps // n_steps + 1)
    bank.puts = bank.puts[:epoch_steps]
    b0 = bank.bytes_moved
    bank.end_epoch()
    end_bytes = (bank.bytes_moved - b0) / epoch_steps
    return {
        "step_ms": 1000 * total / n_steps,
        "comm_share": comm / total,
        "collectives_per_step": calls / n_steps,
        "bank_step_bytes": step_bytes / n_steps,
        "bank_epoch_end_bytes_per_step": end_bytes,
        "bank_bytes_per_step_per_rank": step_bytes / n_steps + end_bytes,
        "bank_rows_per_rank": bank.local.num_samples,
    }


def rank_main(rank: int, world: int, store: str, out: str, shard_dir: str, n_steps: int, warm: int) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    result = {"rank": rank, **read_epoch(shard_dir, rank, world)}
    for refresh in ("epoch", "step"):
        result[refresh] = steps(rank, world, refresh, n_steps, warm)
    Path(f"{out}.{rank}").write_text(json.dumps(result))
    tdist.barrier()
    tdist.destroy_process_group()


def measure(world: int, shard_dir: str, n_steps: int, warm: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        store, out = f"{tmp}/store", f"{tmp}/out"
        try:
            mp.spawn(rank_main, args=(world, store, out, shard_dir, n_steps, warm), nprocs=world, join=True)
        except mp.ProcessExitedException:
            if not all(Path(f"{out}.{r}").exists() for r in range(world)):
                raise
            print(f"W={world}: every rank wrote its figures; one aborted at teardown", file=sys.stderr)
        ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(world)]
    row = {
        "workers": world,
        "shards": ranks[0]["shards"],
        "bytes_read_share": max(r["bytes_read_share"] for r in ranks),
        "bytes_read_share_times_w": world * max(r["bytes_read_share"] for r in ranks),
        "samples_used_share": sum(r["samples_used"] for r in ranks) / ranks[0]["train_samples"],
        "steps_per_epoch": ranks[0]["steps_per_epoch"],
    }
    for refresh in ("epoch", "step"):
        mean = {k: sum(r[refresh][k] for r in ranks) / world for k in ranks[0][refresh]}
        prefix = "" if refresh == "epoch" else "step_policy_"
        row.update({prefix + k: v for k, v in mean.items()})
    formula = exchange_bytes(BATCH, C, world, refresh="epoch")
    row["bank_bytes_per_step_per_rank_formula"] = formula["total"]
    row["bank_bytes_share_of_bound"] = row["bank_bytes_per_step_per_rank"] / formula["bound"]
    row["old_bank_bytes_per_step_per_rank"] = old_exchange_bytes(BATCH, C, world)
    return row


def paper_rows() -> list[dict]:
    out = []
    for label, n_samples, classes, world, batch in PAPER:
        new = exchange_bytes(batch, classes, world, refresh="epoch")
        out.append(
            {
                "setting": label,
                "workers": world,
                "batch_per_rank": batch,
                "classes": classes,
                "samples": n_samples,
                "steps_per_epoch": n_samples // (world * batch),
                "old_bank_bytes_per_step_per_rank": old_exchange_bytes(batch, classes, world),
                "bank_bytes_per_step_per_rank": new["total"],
                "read_bytes_per_step_per_rank": new["read"],
                "epoch_end_bytes_per_step_per_rank": new["epoch_end"],
                "bank_rows_per_rank": -(-n_samples // world),
                "bank_memory_per_rank": -(-n_samples // world) * classes * 4 * 4,
                "bytes_read_share": f"≤ {1 / world + 1 / (n_samples / 5000):.3f} (5,000-image shards)",
            }
        )
    return out


def _b(x: float) -> str:
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if x >= size:
            return f"{x / size:.1f} {unit}"
    return f"{x:.0f} B"


def markdown(rows: list[dict], paper: list[dict], command: str, shard_size: int) -> str:
    out = [
        "# Data-parallel traffic on CPU (gloo)",
        "",
        f"Command: `{command}`  ",
        f"Reads: Fashion-MNIST's {ROWS:,} training images in shards of {shard_size}; the largest share of the "
        "training split's bytes one rank reads in epoch 1 (every rank read every shard, 1.00, before). Steps: "
        f"MSLC on the small CNN, batch {BATCH} per rank, a sharded bank of {ROWS:,} × {C} float32 rows; bank bytes "
        "are what one rank sends to others per step (mean over ranks), with the epoch policy's end-of-epoch "
        "exchange spread over the epoch's steps; collectives per step count every torch.distributed call "
        "(the bank's and the gradient all-reduces); the communication share is the step time spent inside them. "
        "The ranks share 2 cores, so times are shares only.",
        "",
        f"A rank's bank bytes are bounded by {_b(exchange_bytes(BATCH, C, 2)['bound'])} per step whatever W is "
        "(only the (W−1)/W of a batch's rows that live on other ranks travel; 'of bound').",
        "",
        "| workers | shards | bytes read per rank (share) | × W | samples used | bank bytes/step/rank (formula) "
        "| of bound | old exchange | collectives/step | comm. share | `step` policy: bank bytes/step | collectives/step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['workers']} | {r['shards']} | {r['bytes_read_share']:.3f} | {r['bytes_read_share_times_w']:.3f} "
            f"| {100 * r['samples_used_share']:.2f}% | {_b(r['bank_bytes_per_step_per_rank'])} "
            f"({_b(r['bank_bytes_per_step_per_rank_formula'])}) | {r['bank_bytes_share_of_bound']:.2f} "
            f"| {_b(r['old_bank_bytes_per_step_per_rank'])} "
            f"| {r['collectives_per_step']:.1f} | {100 * r['comm_share']:.1f}% "
            f"| {_b(r['step_policy_bank_bytes_per_step_per_rank'])} | {r['step_policy_collectives_per_step']:.1f} |"
        )
    out += [
        "",
        "On paper (the same formulas; `mslc.bank.exchange_bytes` for the new exchange, which the rows above "
        "check against the measured bytes):",
        "",
        "| setting | batch/GPU | steps/epoch | bank bytes/step/rank, old | new: reads | new: epoch-end writes "
        "| new: total | bank memory/rank | bytes read per rank |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in paper:
        out.append(
            f"| {p['setting']} | {p['batch_per_rank']} | {p['steps_per_epoch']:,} "
            f"| {_b(p['old_bank_bytes_per_step_per_rank'])} | {_b(p['read_bytes_per_step_per_rank'])} "
            f"| {_b(p['epoch_end_bytes_per_step_per_rank'])} | {_b(p['bank_bytes_per_step_per_rank'])} "
            f"| {_b(p['bank_memory_per_rank'])} | {p['bytes_read_share']} |"
        )
    return "\n".join(out) + "\n"


def shards(shard_size: int) -> str:
    from pipeline.prep.job import ensure_shards
    from pipeline.training.settings.cli import absolutize, load_config

    cfg = absolutize(
        load_config(
            "fmnist-sym40",
            [f"data.shard_size={shard_size}", f"data.shard_root={ROOT / 'data' / 'shards' / f'ss{shard_size}'}"],
        )
    )
    return str(ensure_shards(cfg.data, log=lambda s: None))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2, 4])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--out", default=str(RESULTS / "scaling"))
    a = p.parse_args(argv)
    shard_dir = shards(a.shard_size)
    rows = [measure(w, shard_dir, a.steps, a.warmup_steps) for w in a.workers]
    for r in rows:
        if (
            abs(r["bank_bytes_per_step_per_rank"] - r["bank_bytes_per_step_per_rank_formula"])
            > 0.15 * r["bank_bytes_per_step_per_rank_formula"] + 64
        ):
            print(
                f"warning: W={r['workers']}: measured bank bytes {r['bank_bytes_per_step_per_rank']:.0f} differ from "
                f"the formula's {r['bank_bytes_per_step_per_rank_formula']:.0f}",
                file=sys.stderr,
            )
    command = "python benchmarks/scaling.py " + " ".join(argv if argv is not None else sys.argv[1:])
    publish(a.out, markdown(rows, paper_rows(), command, a.shard_size), {"rows": rows, "paper": paper_rows()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
