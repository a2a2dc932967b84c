"""ms per training step and peak memory of CE, MW-Net and MSLC (each loss mode, each
meta-gradient option, the cheaper approximations), each as a ratio to CE.

    python benchmarks/step_cost.py [--device cpu|cuda] [--steps 30] [--batch 128] [--arch small-cnn]
                                   [--precision fp32|bf16|fp16] [--size PX --stem cifar|imagenet]
                                   [--variants NAME ...] [--repeat 3]

Same model (the default small CNN, Fashion-MNIST-sized 1×28×28 inputs; ``--arch`` for
others, at 3×32×32 with the CIFAR stem unless ``--size``/``--stem`` say otherwise, e.g.
``--arch resnet50 --size 224 --stem imagenet`` for Clothing1M's), same batch and meta
batch, synthetic data (loading is not measured). ``--variants`` measures a subset (CE is
always measured first: every ratio is to it). Each
variant runs in a fresh process: 5 untimed steps, then ``--steps`` timed ones in 5
chunks (the median chunk counts), in ``--repeat`` rounds over all variants (the fastest
round counts: this 2-core machine's timings drift by ±30% between processes); peak
memory is the growth of the process's peak RSS over its size after set-up on CPU, and
``torch.cuda.max_memory_allocated`` on a GPU. With ``mslc.meta_every=k`` the θ update
runs on one step in k, so its cost is the mean over k consecutive steps. ``--precision``
runs every variant's model passes in that autocast precision (``mslc.precision``).

The phase table splits CE, the exact step (both implementations) and the lagged step
into the phases ``mslc.meta_step`` labels (``PHASES``): the mean time per step inside
each label over ``--steps`` steps (CPU time per profiler label on CPU; on CUDA, CUDA events
on the stream around each phase, which cover the backward's kernels that autograd launches
from its own thread), ``other`` being the rest of the step (the corrector's forward, softmax,
the bank's arithmetic), and each phase in units of CE's forward: the forward
equivalents a step costs, against its floor (CE 3; exact ≈ 10 with forward mode), and the
ratio to CE that the step's passes alone would give (without the rest, and without the
second primal pass forward mode makes): what removing all that is not inherent can reach.
Writes ``benchmarks/results/step_cost.md`` and ``.json`` (``_gpu`` on a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch
from common import publish  # benchmarks/common.py, beside this script

RESULTS = ROOT / "benchmarks" / "results"
DB, JVP = "double-backward", "jvp"
VARIANTS = {  # name: (method, loss mode, meta grad, scope, every, meta-gradient implementation[, lagged])
    "CE": ("ce", "soft", "exact", "all", 1, DB),
    "MW-Net": ("mwnet", "soft", "exact", "all", 1, DB),
    "MSLC soft, exact (double backward)": ("mslc", "soft", "exact", "all", 1, DB),
    "MSLC soft, exact (forward-mode JVP)": ("mslc", "soft", "exact", "all", 1, JVP),
    "MSLC soft, local": ("mslc", "soft", "local", "all", 1, DB),
    "MSLC hard, exact (double backward)": ("mslc", "hard", "exact", "all", 1, DB),
    "MSLC hard, exact (forward-mode JVP)": ("mslc", "hard", "exact", "all", 1, JVP),
    "MSLC soft, last-layer meta-gradient": ("mslc", "soft", "exact", "last", 1, DB),
    "MSLC soft, meta update every 5 steps": ("mslc", "soft", "exact", "all", 5, DB),
    "MSLC soft, last layer + every 5": ("mslc", "soft", "exact", "last", 5, DB),
    "MSLC soft, lagged (forward-mode JVP)": ("mslc", "soft", "exact", "all", 1, JVP, True),
    "MSLC soft, lagged (double backward)": ("mslc", "soft", "exact", "all", 1, DB, True),
}
PHASE_VARIANTS = (
    "CE",
    "MSLC soft, exact (forward-mode JVP)",
    "MSLC soft, exact (double backward)",
    "MSLC soft, lagged (forward-mode JVP)",
)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def input_side(arch: str, size: int = 0) -> int:
    """The synthetic inputs' side: ``size``, else 28 for the small CNN and 32 for the others."""
    return size or (28 if arch == "small-cnn" else 32)


def build_step(name: str, dev: torch.device, batch: int, arch: str, precision: str, size: int = 0, stem: str = "cifar"):
    """A closure running one training step of the variant on fixed synthetic data."""
    from mslc import baselines
    from mslc.corrector import Corrector, LossMLP
    from mslc.meta_step import ce_step, mslc_step
    from mslc.models import build_model
    from mslc.precision import Amp

    method, mode, grad, scope, every, impl, *rest = VARIANTS[name]
    lagged = bool(rest and rest[0])
    amp = Amp.build(precision, dev)
    torch.manual_seed(0)
    size, ch = input_side(arch, size), 1 if arch == "small-cnn" else 3
    fmt = torch.channels_last if dev.type == "cuda" else torch.contiguous_format  # as the pipeline runs
    model = build_model(arch, num_classes=10, in_channels=ch, stem=stem).to(dev, memory_format=fmt)
    opt_w = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    corrector, vnet = Corrector(100, mode).to(dev), LossMLP(100).to(dev)
    opt_t = torch.optim.Adam(corrector.parameters(), lr=1e-3)
    opt_v = torch.optim.Adam(vnet.parameters(), lr=1e-3)
    x = torch.randn(batch, ch, size, size, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=dev)
    xm, ym = torch.randn_like(x), torch.randint(0, 10, (batch,), device=dev)
    prev = torch.softmax(torch.randn(batch, 10, device=dev), 1)
    k = {"i": 0}

    def one():
        if method == "ce":
            ce_step(model, x, y, opt_w=opt_w, amp=amp)
        elif method == "mwnet":
            baselines.mwnet_step(model, vnet, x, y, xm, ym, opt_w=opt_w, opt_v=opt_v, lr_virtual=0.05, amp=amp)
        else:
            mslc_step(
                model,
                corrector,
                x,
                y,
                prev,
                xm,
                ym,
                opt_w=opt_w,
                opt_theta=opt_t,
                lr_virtual=0.05,
                meta_grad=grad,
                scope=scope,
                meta_update=k["i"] % every == 0,
                impl=impl,
                lagged=lagged,
                amp=amp,
            )
        k["i"] += 1

    return one, every


def measure(
    name: str,
    device: str,
    steps: int,
    batch: int,
    arch: str,
    precision: str = "fp32",
    size: int = 0,
    stem: str = "cifar",
) -> dict:
    """Run one variant in this process and return its timing and memory."""
    dev = torch.device(device)
    one, every = build_step(name, dev, batch, arch, precision, size, stem)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    base = rss_mb()
    for _ in range(5):
        one()
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    chunks, per = [], max(every, steps // 5 // every * every)  # whole meta_every periods per chunk
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(per):
            one()
        sync()
        chunks.append(1000 * (time.perf_counter() - t0) / per)
    ms = float(sorted(chunks)[2])  # the median chunk: robust to a burst of interference
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return {"variant": name, "ms_per_step": ms, "peak_mb": peak}


def phases(
    name: str,
    device: str,
    steps: int,
    batch: int,
    arch: str,
    precision: str = "fp32",
    size: int = 0,
    stem: str = "cifar",
    clock: str = "auto",
) -> dict:
    """Mean ms per step inside each of ``mslc.meta_step.PHASES``'s labels, and the rest.

    ``clock``: ``events`` (:class:`mslc.meta_step.PhaseTimer`: CUDA events on the stream, which
    cover the backward's kernels that autograd launches from its own thread; a host clock on
    CPU), ``profiler`` (CPU time per profiler label), ``auto``: events on CUDA, the profiler on CPU."""
    from torch.profiler import ProfilerActivity, profile

    from mslc.meta_step import PHASES, PhaseTimer, timing_phases

    dev = torch.device(device)
    one, _ = build_step(name, dev, batch, arch, precision, size, stem)
    for _ in range(5):
        one()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    clock = ("events" if dev.type == "cuda" else "profiler") if clock == "auto" else clock
    if clock == "events":
        t0 = time.perf_counter()
        with timing_phases(PhaseTimer(dev)) as timer:
            for _ in range(steps):
                one()
            sync()
        total = 1000 * (time.perf_counter() - t0) / steps
        got = timer.totals_ms()
        ms = {label: got.get(label, 0.0) / steps for label in PHASES}
    else:
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                one()
            sync()
        total = 1000 * (time.perf_counter() - t0) / steps
        events = {e.key: e for e in prof.key_averages()}
        ms = {label: (0.0 if label not in events else events[label].cpu_time_total) / 1000 / steps for label in PHASES}
    ms["other"] = max(0.0, total - sum(ms.values()))
    return {"variant": name, "ms": ms, "profiled_ms_per_step": total, "clock": clock}


def phase_table(rows: list[dict]) -> list[str]:
    """Markdown: each phase's ms per step and, in units of CE's forward, the forward equivalents."""
    from mslc.meta_step import PHASES

    cols = [*PHASES, "other"]
    unit = rows[0]["ms"]["step/forward"] or float("nan")
    ce_passes = sum(rows[0]["ms"][c] for c in PHASES)
    md = [
        "",
        "## Where a step's time goes",
        "",
        (
            "ms per step in each phase (CUDA events on the stream around it); in brackets, units of CE's forward pass."
            if rows[0].get("clock") == "events"
            else "ms per step in each profiled phase (profiler on, so slower than the table above); in brackets, "
            "units of CE's forward pass."
        ),
        "",
        "| variant | " + " | ".join(c.removeprefix("step/") for c in cols) + " | total | forward equivalents "
        "| passes only, × CE |",
        "|---|" + "---|" * (len(cols) + 3),
    ]
    for r in rows:
        cells = [f"{r['ms'][c]:.1f} ({r['ms'][c] / unit:.1f})" for c in cols]
        r["forward_equivalents"] = r["profiled_ms_per_step"] / unit
        primal = r["ms"]["step/forward"] if r["ms"]["step/jvp"] > 0 else 0.0  # forward mode's second primal pass
        r["passes_only_x_ce"] = (sum(r["ms"][c] for c in PHASES) - primal) / ce_passes
        md.append(
            f"| {r['variant']} | {' | '.join(cells)} | {r['profiled_ms_per_step']:.1f} | "
            f"{r['forward_equivalents']:.1f} | {r['passes_only_x_ce']:.2f} |"
        )
    md += [
        "",
        *(f"- {k.removeprefix('step/')}: {v}" for k, v in PHASES.items()),
        "- passes only, × CE: the labelled phases less what is not inherent to the step, against CE's "
        "labelled phases: without the rest (`other`) and, in forward mode, without the product's primal pass "
        "(forward mode runs the real forward again; counted as one real forward). The ratio the step would "
        "have if those were gone",
    ]
    return md


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--arch", default="small-cnn")
    ap.add_argument("--repeat", type=int, default=3, help="rounds over all variants; the fastest round counts")
    ap.add_argument("--precision", default="fp32", help="fp32 | bf16 | fp16 autocast of every variant's model passes")
    ap.add_argument("--size", type=int, default=0, help="input side in pixels (default: 28 small CNN, 32 others)")
    ap.add_argument("--stem", default="cifar", choices=["cifar", "imagenet"], help="the ResNets' stem")
    ap.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        choices=list(VARIANTS),
        metavar="NAME",
        help="the variants to measure (CE is always measured)",
    )
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one variant, print JSON
    ap.add_argument("--phases-of", help=argparse.SUPPRESS)  # internal: profile one variant's phases, print JSON
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    if a.one:
        print(json.dumps(measure(a.one, a.device, a.steps, a.batch, a.arch, a.precision, a.size, a.stem)))
        return 0
    if a.phases_of:
        print(json.dumps(phases(a.phases_of, a.device, min(a.steps, 20), a.batch, a.arch, a.precision, a.size, a.stem)))
        return 0
    common = [
        "--device",
        a.device,
        "--steps",
        str(a.steps),
        "--batch",
        str(a.batch),
        "--arch",
        a.arch,
        "--precision",
        a.precision,
        "--size",
        str(a.size),
        "--stem",
        a.stem,
    ]
    chosen = ["CE", *(v for v in VARIANTS if v in a.variants and v != "CE")]  # in the table's order, CE first
    runs: dict[str, list[dict]] = {name: [] for name in chosen}
    info = {
        "device": a.device,
        "arch": a.arch,
        "input": f"{input_side(a.arch, a.size)} px",
        "stem": a.stem if a.arch != "small-cnn" else "-",
        "batch": a.batch,
        "meta_batch": a.batch,
        "steps": a.steps,
        "precision": a.precision,
        "rounds": a.repeat,
        "timing": "per variant: the fastest of its rounds, each round the median of 5 chunks",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    if a.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    out = a.out or str(RESULTS / ("step_cost_gpu" if a.device.startswith("cuda") else "step_cost"))
    phase_rows: list[dict] = []
    for rep in range(a.repeat):  # rounds over all variants, so slow drift hits every variant alike
        for name in chosen if rep % 2 == 0 else reversed(chosen):
            res = subprocess.run(
                [sys.executable, __file__, "--one", name, *common], capture_output=True, text=True, check=True
            )
            runs[name].append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(f"round {rep + 1}, {name}: {runs[name][-1]['ms_per_step']:.1f} ms", file=sys.stderr)
            write_table(out, runs, phase_rows, info, done=False)  # each row as soon as it exists: a timeout keeps it
    for name in PHASE_VARIANTS:
        if name in chosen:
            res = subprocess.run(
                [sys.executable, __file__, "--phases-of", name, *common], capture_output=True, text=True, check=True
            )
            phase_rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            write_table(out, runs, phase_rows, info, done=False)
    write_table(out, runs, phase_rows, info, done=True)
    return 0


def write_table(out: str, runs: dict[str, list[dict]], phase_rows: list[dict], info: dict, *, done: bool) -> None:
    """The table of what is measured so far (``done=False`` says so in it)."""
    rows = [
        min(v, key=lambda r: r["ms_per_step"]) | {"ms_all_rounds": [r["ms_per_step"] for r in v]}
        for v in runs.values()
        if v
    ]
    ce = next((r for r in rows if r["variant"] == "CE"), None)
    for r in rows:
        r["x_ce_time"] = r["ms_per_step"] / ce["ms_per_step"] if ce else float("nan")
        r["x_ce_memory"] = r["peak_mb"] / ce["peak_mb"] if ce and ce["peak_mb"] > 0 else float("nan")
    md = [f"# Step cost\n\n`python benchmarks/step_cost.py {shlex.join(sys.argv[1:])}`\n"]
    if not done:
        md.append("*Incomplete: written while it ran; the rows so far.*\n")
    md += ["| variant | ms / step | × CE | peak memory MB | × CE |", "|---|---|---|---|---|"]
    md += [
        f"| {r['variant']} | {r['ms_per_step']:.1f} | {r['x_ce_time']:.2f} | {r['peak_mb']:.0f} | "
        f"{r['x_ce_memory']:.2f} |"
        for r in rows
    ]
    md += ["", *(f"- {k}: {v}" for k, v in info.items())]
    md += (phase_table(phase_rows) if phase_rows else []) + [""]
    publish(out, "\n".join(md), {"rows": rows, "phases": phase_rows, "info": info, "complete": done}, quiet=not done)


if __name__ == "__main__":
    sys.exit(main())
