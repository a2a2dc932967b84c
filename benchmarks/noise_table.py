"""MSLC against CE and GLC over a grid of label noise on Fashion-MNIST, at the user-facing
defaults: the labels each hands back, and the model.

    python benchmarks/noise_table.py [--noises sym-80 ...] [--methods MSLC GLC ...] [--seeds 0 1 2]
                                     [--jobs 2] [--full] [--quick] [--device cpu|cuda] [key=value ...]

The grid: symmetric noise at 20/40/60/80% (the paper's generator, which may keep the true
label), asymmetric at 20/40% (``mslc.noise.FMNIST_ASYM``), pair-flip at 45% and
instance-dependent noise (Xia et al. 2020) at 20/40%. In every cell CE, GLC and MSLC run
as a user runs them: the default preset (``fmnist-sym40``) with only ``data.noise`` and
``data.noise_rate`` changed and ``meta.method`` set, so the rows move when the preset's
defaults do (re-run them then). At the four 40% kinds two more rows: MW-Net and MSLC at
the paper's settings (``common.PAPER_SETTINGS``), on the same schedule.

Default (the 2-core CPU budget): each run trains on a seeded 10,000-image subset of the
training split (meta 1,000, clean validation 1,000, test 2,000). ``--full`` trains on every
image and writes ``noise_table_full.*``; ``--quick`` is a smoke test of this script
(``noise_table_quick.*``). ``key=value`` overrides apply to every run.

The grid takes hours on 2 cores, so any part of it can be run (``--noises``, ``--methods``,
``--seeds``): each finished run is merged into the committed JSON at once (a run of the
same method, noise and seed replaces the old one), and the Markdown is regenerated from
the whole JSON. Two invocations may fill it at the same time (the merge holds a lock).
``--jobs N`` runs N runs at once in separate processes, each with ``cores / N`` threads;
``wall s`` is each run's own time, as it ran (the JSON notes how many ran at once).

Per run: ``val`` is the best clean-validation accuracy of any epoch; ``best`` the test
accuracy at the epoch with the best clean-validation accuracy; ``last5`` the mean test
accuracy of the last 5 epochs; ``labels`` / ``clean`` / ``noisy`` the accuracy of the
exported labels (the epoch the run chose without test or true labels; CE's are the given
labels) on all / originally clean / originally noisy samples (``clean`` is the
clean-label damage: 100 − clean is the share of right labels a method changed);
``F1`` of "exported label ≠ given label" as a detector of wrong labels; ``peak`` the best
label accuracy of any epoch after the warm-up (``peak − labels`` is what the export rule
gave away). The table's verdict compares MSLC with GLC per cell: a difference within the
larger of the two standard deviations counts as a tie.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np
import torch
from common import PAPER_SETTINGS, label_epochs  # benchmarks/common.py, beside this script

RESULTS = ROOT / "benchmarks" / "results"
PRESET = "fmnist-sym40"
GRID = ["sym-20", "sym-40", "sym-60", "sym-80", "asym-20", "asym-40", "pairflip-45", "instance-20", "instance-40"]
FORTY = ["sym-40", "asym-40", "pairflip-45", "instance-40"]  # where the paper-settings rows run
METHODS = {  # row name: (overrides beyond the preset, the cells it runs in)
    "CE": (["meta.method=ce"], GRID),
    "GLC": (["meta.method=glc"], GRID),
    "MSLC": (["meta.method=mslc"], GRID),
    "MW-Net (paper settings)": ([*PAPER_SETTINGS, "meta.method=mwnet"], FORTY),
    "MSLC (paper settings)": ([*PAPER_SETTINGS, "meta.method=mslc"], FORTY),
}
GRID_METHODS = [m for m, (_, cells) in METHODS.items() if cells == GRID]
BUDGET = ["data.max_train=10000", "data.max_test=2000"]
QUICK = [
    "data.max_train=600",
    "data.max_test=300",
    "data.n_meta=100",
    "data.n_val=100",
    "optim.epochs=3",
    "meta.warmup_epochs=1",
    "optim.milestones=[2]",
    "data.shard_size=300",
]
SHOWN = (
    ("val", "val"),
    ("best", "best"),
    ("last5", "last5"),
    ("label_all", "labels"),
    ("label_clean", "clean"),
    ("label_noisy", "noisy"),
    ("f1", "F1"),
    ("label_peak", "peak"),
)


def parse_noise(cell: str) -> tuple[str, float]:
    """``"pairflip-45"`` → ``("pairflip", 0.45)``."""
    kind, _, pct = cell.rpartition("-")
    if not kind or not pct.isdigit():
        raise ValueError(f"a noise cell is KIND-PERCENT (e.g. sym-40), got {cell!r}")
    return kind, int(pct) / 100


def one_run(method: str, cell: str, seed: int, budget: list[str], storage: str, device: str, threads: int) -> dict:
    """One training run in this process; its row for the table."""
    from pipeline.prep.job import ensure_shards
    from pipeline.training.run.checkpoint import LocalReporter
    from pipeline.training.settings.cli import absolutize, load_config
    from pipeline.worker import run

    kind, rate = parse_noise(cell)
    tag = method.replace(" ", "_").replace("(", "").replace(")", "")
    name = f"grid-{cell}-{tag}-s{seed}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    cfg = absolutize(
        load_config(
            PRESET,
            [
                f"data.noise={kind}",
                f"data.noise_rate={rate}",
                f"run.seed={seed}",
                f"run.name={name}",
                f"run.storage_path={storage}",
                "run.tensorboard=false",
                "run.report=false",
                "run.keep_checkpoints=1",
                "run.keep_best=false",
                "run.crossfit_folds=0",  # the held-out estimate changes no label: review_budget.py measures it
                f"scale.threads={threads}",
                *budget,
                *METHODS[method][0],
            ],
        )
    )
    ensure_shards(cfg.data, log=lambda s: None)
    t0 = time.time()
    res = run(cfg, LocalReporter(Path(cfg.run.storage_path) / name, keep=1), torch.device(device), log=lambda s: None)
    wall = time.time() - t0
    m = json.loads(Path(res["metrics"]).read_text())
    s, lab = res["summary"], res["summary"]["labels"]
    after = [h for h in m["epochs"] if h["phase"] != "warmup"] or m["epochs"]
    return {
        "method": method,
        "noise": cell,
        "seed": seed,
        "val": max((h["val_acc"] for h in m["epochs"] if h.get("val_acc") is not None), default=None),
        "best": s["best_test_acc"],
        "last5": s["last5_test_acc"],
        "label_all": lab.get("corrected_all"),
        "label_clean": lab.get("corrected_clean"),
        "label_noisy": lab.get("corrected_noisy"),
        "precision": lab.get("detect_precision"),
        "recall": lab.get("detect_recall"),
        "f1": lab.get("detect_f1"),
        "wall_s": wall,
        "threads": threads,
        "labels_epoch": lab["epoch"],
        "labels_epochs": lab["epochs"],
        "label_peak": max(h.get("corrected_all") or 0.0 for h in after),
        "selected_epoch": s["selected_epoch"],
        "realized_rate": m["noise"]["realized_rate"],
        "history": [
            {
                k: h.get(k)
                for k in (
                    "epoch",
                    "phase",
                    "val_acc",
                    "test_acc",
                    "corrected_all",
                    "corrected_clean",
                    "corrected_noisy",
                    "alpha_clean",
                    "alpha_noisy",
                    "flags",  # truth-free figures, for export rules judged without true labels
                    "churn",
                    "alpha_mean",
                    "beta_mean",
                    "meta_loss",
                    "train_loss",
                )
            }
            for h in m["epochs"]
        ],
    }


# ------------------------------------------------------------------ the table


def cells(rows: list[dict], method: str, noise: str, key: str) -> list[float]:
    return [
        r[key]
        for r in rows
        if r["method"] == method and r["noise"] == noise and r.get(key) is not None and not np.isnan(r[key])
    ]


def mean_std(vals: list[float]) -> str:
    if not vals:
        return "–"
    if len(vals) == 1:  # one seed: no spread to show
        return f"{100 * vals[0]:.2f}"
    return f"{100 * np.mean(vals):.2f} ± {100 * np.std(vals, ddof=1):.2f}"


def stats(rows: list[dict], method: str, noise: str, key: str) -> tuple[float, float, int]:
    """(mean, sample std (0 for one seed), seeds) of ``key``; NaN mean where nothing ran."""
    v = cells(rows, method, noise, key)
    if not v:
        return float("nan"), 0.0, 0
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v)


def mean_ranks(rows: list[dict], methods: list[str], noises: list[str], keys=("last5", "label_all")) -> dict:
    """Mean rank (1 = best) of each method over every (noise, key) pair, by the seeds' mean;
    a method missing from a cell ranks last there."""
    got = {m: [] for m in methods}
    for n in noises:
        for k in keys:
            means = {m: stats(rows, m, n, k)[0] for m in methods}
            order = sorted(methods, key=lambda m: -means[m] if not np.isnan(means[m]) else np.inf)
            for i, m in enumerate(order):
                got[m].append(i + 1)
    return {m: float(np.mean(v)) if v else float("nan") for m, v in got.items()}


def compare(rows: list[dict], noise: str, key: str, a: str = "MSLC", b: str = "GLC") -> tuple[str, float | None]:
    """``(verdict, mean difference a − b)``: ``≥`` where a's mean is at least b's, ``tie``
    where it is below by at most the larger standard deviation, ``<`` otherwise."""
    (ma, sa, na), (mb, sb, nb) = stats(rows, a, noise, key), stats(rows, b, noise, key)
    if not na or not nb:
        return "–", None
    d = ma - mb
    return ("≥" if d >= 0 else "tie" if -d <= max(sa, sb) else "<"), d


def verdict_md(rows: list[dict], noises: list[str]) -> list[str]:
    out = [
        "### MSLC against GLC, cell by cell",
        "",
        "Differences in points (MSLC − GLC, means over the seeds); `tie`: below by at most the larger "
        "standard deviation. `peak − labels`: MSLC's label peak after the warm-up minus its exported labels.",
        "",
        "| noise | labels | last5 | clean labels | MSLC peak − labels | seeds (MSLC/GLC) |",
        "|---|---|---|---|---|---|",
    ]
    for n in noises:
        parts = []
        for key in ("label_all", "last5", "label_clean"):
            v, d = compare(rows, n, key)
            parts.append("–" if d is None else f"{v} ({100 * d:+.2f})")
        gap = [p - e for p, e in zip(cells(rows, "MSLC", n, "label_peak"), cells(rows, "MSLC", n, "label_all"))]
        seeds = f"{stats(rows, 'MSLC', n, 'best')[2]}/{stats(rows, 'GLC', n, 'best')[2]}"
        out.append(f"| {n} | " + " | ".join(parts) + f" | {f'{100 * max(gap):.2f} (max)' if gap else '–'} | {seeds} |")
    return out + [""]


def markdown(rows: list[dict], noises: list[str], header: list[str]) -> str:
    out = [*header, ""]
    present = [m for m in METHODS if any(r["method"] == m for r in rows)]
    for n in noises:
        here = [m for m in present if cells(rows, m, n, "best")]
        if not here:
            continue
        rate = [r["realized_rate"] for r in rows if r["noise"] == n]
        out += [
            f"### {n} (wrong labels: {100 * np.mean(rate):.1f}%)",
            "",
            "| method | " + " | ".join(t for _, t in SHOWN) + " | labels from epochs | seeds | wall s |",
            "|---|" + "---|" * (len(SHOWN) + 3),
        ]
        for m in here:
            ep = sorted({e for r in rows if r["method"] == m and r["noise"] == n for e in label_epochs(r)})
            wall = cells(rows, m, n, "wall_s")
            out.append(
                f"| {m} | "
                + " | ".join(mean_std(cells(rows, m, n, k)) for k, _ in SHOWN)
                + f" | {', '.join(map(str, ep))} | {len(wall)} | {np.mean(wall):.0f} |"
            )
        out.append("")
    grid = [n for n in noises if all(cells(rows, m, n, "best") for m in GRID_METHODS)]
    out += verdict_md(rows, grid)
    rk = mean_ranks(rows, GRID_METHODS, grid)
    out += [
        f"### Mean rank over the grid's cells by last5 and exported labels (1 = best; {len(grid)} cells)",
        "",
        "| method | mean rank |",
        "|---|---|",
        *[f"| {m} | {rk[m]:.2f} |" for m in sorted(GRID_METHODS, key=rk.get)],
        "",
    ]
    return "\n".join(out)


# ------------------------------------------------------------------ the committed JSON


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive lock beside ``path`` (two invocations filling one table)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load(path: Path, protocol: dict) -> dict:
    """The committed payload, or a new one; a payload of another protocol is an error."""
    if not path.exists():
        return {"protocol": protocol, "rows": []}
    payload = json.loads(path.read_text())
    if payload.get("protocol") != protocol:
        raise SystemExit(
            f"error: {path} holds runs of another protocol ({payload.get('protocol')}); "
            f"this one is {protocol}: pass --out to start another table"
        )
    return payload


def header(payload: dict) -> list[str]:
    p = payload["protocol"]
    seeds = sorted({r["seed"] for r in payload["rows"]})
    wall = sum(r["wall_s"] for r in payload["rows"])
    return [
        f"# Label noise on Fashion-MNIST: MSLC, GLC and CE at the user-facing defaults ({p['kind']})",
        "",
        f"Made by `python benchmarks/noise_table.py{' --full' if p['kind'] == 'full data' else ''}"
        f"{' --quick' if p['kind'] == 'quick smoke test' else ''}` (any part of the grid at a time; the rows "
        f"merge). Preset `{PRESET}`, overrides of every run: `{' '.join(p['overrides']) or '(none)'}`; seeds "
        f"{seeds}; {len(payload['rows'])} runs, {wall / 3600:.1f} h of run time; torch "
        f"{payload.get('torch', '?')}, device {payload.get('device', '?')}.",
        "",
        "Mean ± std over the seeds, in %. val: the best clean-validation accuracy; best: test accuracy at the "
        "best clean-validation epoch; last5: mean test accuracy of the last 5 epochs; labels / clean / noisy: "
        "accuracy of the exported labels on all / originally clean / originally noisy samples (CE: the given "
        "labels); F1: exported label ≠ given label as a detector of wrong labels; peak: the best label accuracy "
        "of any epoch after the warm-up; wall s: one run's time (runs went "
        f"{payload.get('jobs', 1)} at a time on this machine).",
    ]


def merge(out: Path, protocol: dict, new: list[dict], extra: dict) -> dict:
    """Merge ``new`` rows into ``out.json`` (same method, noise and seed: replaced) and
    rewrite ``out.md`` from all rows; both written whole, then renamed."""
    path = out.with_suffix(".json")
    with locked(path):
        payload = load(path, protocol)
        keep = {(r["method"], r["noise"], r["seed"]) for r in new}
        payload["rows"] = [r for r in payload["rows"] if (r["method"], r["noise"], r["seed"]) not in keep] + new
        payload["rows"].sort(
            key=lambda r: (
                GRID.index(r["noise"]) if r["noise"] in GRID else 99,
                list(METHODS).index(r["method"]),
                r["seed"],
            )
        )
        payload.update(extra)
        noises = [n for n in GRID if any(r["noise"] == n for r in payload["rows"])]
        payload["mean_rank"] = mean_ranks(
            payload["rows"],
            GRID_METHODS,
            [n for n in noises if all(cells(payload["rows"], m, n, "best") for m in GRID_METHODS)],
        )
        md = markdown(payload["rows"], noises, header(payload))
        for target, text in ((path, json.dumps(payload, indent=1)), (out.with_suffix(".md"), md)):
            tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
            tmp.write_text(text)
            os.replace(tmp, target)
        return payload


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--noises", nargs="+", default=GRID, choices=GRID, metavar="NOISE", help=f"cells of the grid ({' '.join(GRID)})"
    )
    ap.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        choices=list(METHODS),
        metavar="METHOD",
        help=f"rows ({', '.join(METHODS)}; each runs only in its own cells)",
    )
    ap.add_argument("--full", action="store_true", help="every training image (GPU machines)")
    ap.add_argument("--quick", action="store_true", help="a tiny smoke test of this script")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--storage", default="", help="where runs go (default: a new directory under runs/)")
    ap.add_argument(
        "--out", default="", help="output path without extension (default: results/noise_table[_full|_quick])"
    )
    ap.add_argument("--list", action="store_true", help="print the runs this would make and stop")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    a = ap.parse_args(argv)
    if a.full and a.quick:
        ap.error("--full and --quick exclude each other")
    if a.jobs < 1:
        ap.error("--jobs must be >= 1")
    kind = "full data" if a.full else "quick smoke test" if a.quick else "CPU budget: 10,000 training images"
    budget = [*([] if a.full else QUICK if a.quick else BUDGET), *a.overrides]
    out = Path(a.out or RESULTS / ("noise_table" + ("_full" if a.full else "_quick" if a.quick else "")))
    protocol = {"kind": kind, "overrides": budget}
    todo = [(m, n, s) for s in a.seeds for n in a.noises for m in a.methods if n in METHODS[m][1]]
    if a.list:
        print("\n".join(f"{m} {n} seed {s}" for m, n, s in todo))
        return 0
    load(out.with_suffix(".json"), protocol)  # a table of another protocol: stop before training
    storage = str(Path(a.storage or ROOT / "runs" / f"grid-{time.strftime('%Y%m%d-%H%M%S')}").resolve())
    threads = max(1, (os.cpu_count() or 1) // a.jobs)
    extra = {"torch": torch.__version__, "device": a.device, "jobs": a.jobs, "threads": threads}
    t0, done = time.time(), 0
    if a.jobs > 1:
        for n in dict.fromkeys(n for _, n, _ in todo):  # shards first, one at a time: every method shares them
            prepare_shards(n, budget)
    with (
        ProcessPoolExecutor(a.jobs, mp_context=get_context("spawn")) if a.jobs > 1 else contextlib.nullcontext() as pool
    ):
        runs = (
            (pool.submit(one_run, m, n, s, budget, storage, a.device, threads) for m, n, s in todo)
            if pool
            else (one_run(m, n, s, budget, storage, a.device, threads) for m, n, s in todo)
        )
        for r in (f.result() for f in as_completed(list(runs))) if pool else runs:
            merge(out, protocol, [r], extra)
            done += 1
            print(
                f"{r['noise']:>12} {r['method']:<24} seed {r['seed']}: last5 {100 * r['last5']:.2f} labels "
                f"{100 * (r['label_all'] or 0):.2f} (clean {100 * (r['label_clean'] or 0):.2f}, peak "
                f"{100 * r['label_peak']:.2f}) [{r['wall_s']:.0f}s; {done}/{len(todo)}, {time.time() - t0:.0f}s in all]",
                flush=True,
            )
    print(out.with_suffix(".md").read_text())
    return 0


def prepare_shards(cell: str, budget: list[str]) -> None:
    """Write a cell's shards if they are missing (before parallel runs would race to)."""
    from pipeline.prep.job import ensure_shards
    from pipeline.training.settings.cli import absolutize, load_config

    kind, rate = parse_noise(cell)
    cfg = absolutize(load_config(PRESET, [f"data.noise={kind}", f"data.noise_rate={rate}", *budget]))
    ensure_shards(cfg.data, log=lambda s: None)


if __name__ == "__main__":
    sys.exit(main())
