"""The review budget against the truth: is the precision a run estimates for its flags,
without true labels, the precision they have?

    python benchmarks/review_budget.py [--noises sym-40 asym-40 instance-40] [--seeds 0 1 2] [--quick]
                                       [--update] [--rescore RUN_DIR ...] [--device cpu|cuda] [key=value ...]

Each run is the default run (preset ``fmnist-sym40``, all of Fashion-MNIST) with only
``data.noise`` / ``data.noise_rate`` changed. A run estimates, for each flag (corrected label ≠
given label), the probability that its corrected label is right (``est_correct``: the model's
prediction times the likelihood of the given label under the noise transition estimated on the
trusted meta set; no true training label is read). By default (``run.crossfit_folds=2``) the
prediction is held out: after the run two fresh models, each trained on half of the samples with
their exported ỹ, predict the other half (``mslc.estimate.heldout_posterior``); ``run.crossfit_folds=0``
(with ``--out``) measures the run's own model instead. Per band of confidence (the corrected
label's probability under ỹ, on which ``relabel.csv`` is cut) this prints the estimated
precision (the mean ``est_correct`` of the band's flags) beside the true one (the share whose
corrected label is the true label), and for the threshold the run chose (the lowest whose
flags are estimated ≥ 95% right with 95% confidence, the bound read from the lower of the estimate
and its out-of-sample check) the true precision of ``relabel.csv``. One run per noise and
seed (three seeds by default: mean ± std; about 2 hours on 2 CPU cores, a quarter of it the
cross-fit).

``--update`` runs only ``--noises`` and keeps the other noises' rows of the table already there
(for an edit that cannot change their runs; refused where those runs had other settings; the
table says which commit made which rows). ``--rescore RUN_DIR ...`` trains nothing: it makes
every row of the table again from its run's files (the runs this script left under
``--storage``), for an edit to how the budget cuts, which changes no run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np
import torch
from common import publish  # benchmarks/common.py, beside this script

RESULTS = ROOT / "benchmarks" / "results"
PRESET = "fmnist-sym40"
NOISES = ["sym-40", "asym-40", "instance-40"]
BANDS = [0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0001]
QUICK = [
    "data.max_train=1500",
    "data.max_test=500",
    "data.n_meta=200",
    "data.n_val=200",
    "optim.epochs=3",
    "meta.warmup_epochs=1",
    "optim.milestones=[2]",
    "data.shard_size=500",
]


def bands(table: dict) -> list[dict]:
    """Per confidence band of the flags: count, estimated and true precision."""
    fl = table["flagged"]
    out = []
    for lo, hi in zip(BANDS[:-1], BANDS[1:]):
        sel = fl & (table["prob"] >= lo) & (table["prob"] < hi)
        n = int(sel.sum())
        out.append(
            {
                "band": f"[{lo:.2f}, {min(hi, 1.0):.2f}{']' if hi > 1 else ')'}",
                "flags": n,
                "estimated": float(table["est_correct"][sel].mean()) if n else None,
                "true": float(table["right"][sel].mean()) if n else None,
            }
        )
    return out


def run_overrides(noise: str, seed: int, name: str, storage: str, extra: list[str]) -> list[str]:
    """What one run of this benchmark is given: the noise, the seed, where it goes, then ``extra``."""
    kind, _, pct = noise.rpartition("-")
    return [
        f"data.noise={kind}",
        f"data.noise_rate={int(pct) / 100}",
        f"run.seed={seed}",
        f"run.name={name}",
        f"run.storage_path={storage}",
        "run.tensorboard=false",
        "run.report=false",
        "run.keep_checkpoints=1",
        "run.keep_best=false",
        *extra,
    ]


def one_run(noise: str, seed: int, extra: list[str], storage: str, device: str) -> dict:
    from pipeline.prep.job import ensure_shards
    from pipeline.review.select import read_table
    from pipeline.training.run.checkpoint import LocalReporter
    from pipeline.training.settings.cli import absolutize, load_config
    from pipeline.worker import run

    name = f"budget-{noise}-s{seed}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    cfg = absolutize(load_config(PRESET, run_overrides(noise, seed, name, storage, extra)))
    ensure_shards(cfg.data, log=lambda s: None)
    t0 = time.time()
    res = run(cfg, LocalReporter(Path(storage) / name, keep=1), torch.device(device), log=lambda s: None)
    return {
        "noise": noise,
        "seed": seed,
        "wall_s": time.time() - t0,
        **score(read_table(res["corrected_labels"])),
        "labels": res["summary"]["labels"].get("corrected_all"),
    }


def score(t: dict) -> dict:
    """What the table reports of one run's label table: its flags, the budget's cut and the
    truth beside the estimate per band and per threshold."""
    from pipeline.review.select import budget

    t["flagged"] = t["corrected"] != t["given"]
    t["right"] = (t["corrected"] == t["true"]).astype(np.float64)
    b = budget(t)
    cut = next(r for r in b["rows"] if r["threshold"] == b["threshold"]) if b["threshold"] < 1 else None
    return {
        "flags": int(t["flagged"].sum()),
        "samples": len(t["given"]),
        "threshold": b["threshold"],
        "estimated_by": b["estimated_by"],
        "cut_flags": cut["flags"] if cut else 0,
        "cut_estimated": cut["precision"] if cut else None,
        "cut_lower": cut.get("lower") if cut else None,
        "chosen_by": b["chosen_by"],
        "cut_true": cut["true_precision"] if cut else None,
        "bands": bands(t),
        "thresholds": [
            {k: r[k] for k in ("threshold", "flags", "precision", "cautious", "lower", "true_precision") if k in r}
            for r in b["rows"]
        ],
    }


# where a run's files and shards went: they differ between runs of the same settings
PLACES = {("run", "name"), ("run", "storage_path"), ("data", "shard_root"), ("data", "raw_dir")}


def rescored(dirs: list[str], table: dict, out: Path, overrides: list[str], made_by: str) -> list[dict]:
    """``--rescore``: every row of ``table`` (``out.json``, checked by :func:`same_runs`) again
    from its run's files in ``dirs`` (no training): the cut and the per-threshold rows recomputed
    by today's code, the rest (wall time, exported labels) kept. Refused where a run had other settings than this benchmark
    gives, or where a row of the table has no run among ``dirs``."""
    from pipeline.review.select import read_table
    from pipeline.rundir import RunDir

    old = {(r["noise"], r["seed"]): r for r in table["rows"]}
    rows = {}
    for d in dirs:
        rd = RunDir(Path(d).resolve())
        cfg = json.loads(rd.metrics.read_text())["config"]
        noise, seed = f"{cfg['data']['noise']}-{round(100 * cfg['data']['noise_rate'])}", cfg["run"]["seed"]
        want = settings(run_overrides(noise, seed, cfg["run"]["name"], cfg["run"]["storage_path"], overrides))
        differ = [k for k in want if not isinstance(want[k], dict) and cfg.get(k) != want[k]]
        differ += [
            f"{k}.{f}"
            for k in want
            if isinstance(want[k], dict)
            for f in want[k]
            if (k, f) not in PLACES and cfg.get(k, {}).get(f) != want[k][f]
        ]
        if differ:
            raise SystemExit(f"--rescore: {rd} ran with other settings than this benchmark's: {', '.join(differ)}")
        if (noise, seed) not in old:
            raise SystemExit(f"--rescore: {rd} is {noise} seed {seed}, which {out}.json has no row for")
        row = old[(noise, seed)]
        at = row.get("commit", "unknown").removeprefix("table of ").split(",")[0]
        rows[(noise, seed)] = {**row, **score(read_table(rd.labels)), "commit": f"{at}, rescored at {made_by}"}
    missing = sorted(set(old) - set(rows))
    if missing:
        raise SystemExit(f"--rescore: no run among the directories given for {missing} of {out}.json")
    return list(rows.values())


def pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def mean_std(vals: list) -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return "–"
    return f"{100 * np.mean(vals):.1f}" + (f" ± {100 * np.std(vals, ddof=1):.1f}" if len(vals) > 1 else "")


def made_at(rows: list[dict]) -> str:
    """Which commit made each noise's runs, where the table was put together by ``--update``."""
    at = {r["noise"]: r["commit"] for r in rows if "commit" in r}
    if len(set(at.values())) < 2:
        return ""
    parts = [f"{n} kept from the {c} (`--update`)" if c.startswith("table ") else f"{n} at {c}" for n, c in at.items()]
    return " Runs: " + "; ".join(parts) + "."


def markdown(rows: list[dict], args: argparse.Namespace, overrides: list[str]) -> str:
    lines = [
        "# Review budget: estimated against true precision of the flags",
        "",
        f"Made by `python benchmarks/review_budget.py{' --quick' if args.quick else ''}`. Preset `{PRESET}` "
        f"(the default run{', tiny' if args.quick else ', all of Fashion-MNIST'}), overrides "
        f"`{' '.join(overrides) or 'none'}`; seeds {args.seeds}"
        + (
            " (one seed per cell is one run: a probe, not a mean)"
            if len(args.seeds) == 1
            else " (mean ± std over them)"
        )
        + f"; torch {torch.__version__}, device {args.device}."
        + made_at(rows),
        "",
        "A flag is a sample whose corrected label differs from its given one. *estimated*: the mean of the "
        "run's `est_correct` over the band's flags (computed without any true training label); *true*: the "
        "share of them whose corrected label is the true label. Bands are of the corrected label's "
        "probability under ỹ (the column `relabel.csv` is cut on). *cut*: the threshold the run chose for "
        "`relabel.csv` (the lowest whose flags are estimated ≥ 95% right with 95% confidence: the lower "
        "bound, from the clean validation split's size, of the lower of the estimate and its out-of-sample "
        "check `est_correct_cautious`, one-sided 95% for all 20 cuts at once, *lower*, reaches 95%) and "
        "the true precision of what it keeps.",
        "",
    ]
    for noise in args.noises:
        rs = [r for r in rows if r["noise"] == noise]
        if not rs:
            continue
        lines += [
            f"## {noise}",
            "",
            f"flags {mean_std([r['flags'] / r['samples'] for r in rs])}% of the labels; exported labels "
            f"{mean_std([r['labels'] for r in rs])}% right; estimate by {rs[0]['estimated_by']}; "
            f"wall {np.mean([r['wall_s'] for r in rs]):.0f} s per run",
            "",
            "| confidence band | flags | estimated % | true % | estimated − true |",
            "|---|---|---|---|---|",
        ]
        for i, band in enumerate(rs[0]["bands"]):
            est = [r["bands"][i]["estimated"] for r in rs]
            tru = [r["bands"][i]["true"] for r in rs]
            diff = [e - t for e, t in zip(est, tru) if e is not None and t is not None]
            lines.append(
                f"| {band['band']} | {np.mean([r['bands'][i]['flags'] for r in rs]):.0f} | "
                f"{mean_std(est)} | {mean_std(tru)} | {mean_std(diff) if diff else '–'} |"
            )
        lines += [
            "",
            "| cut | flags kept | estimated % | lower % | true % |",
            "|---|---|---|---|---|",
            "| " + ", ".join(f"{r['threshold']:.2f}" for r in rs) + " | "
            f"{np.mean([r['cut_flags'] for r in rs]):.0f} | {mean_std([r['cut_estimated'] for r in rs])} | "
            f"{mean_std([r.get('cut_lower') for r in rs])} | {mean_std([r['cut_true'] for r in rs])} |",
            "",
        ]
    worst = [
        abs(b["estimated"] - b["true"])
        for r in rows
        for b in r["bands"]
        if b["estimated"] is not None and b["true"] is not None and b["flags"] >= 100
    ]
    if worst:
        off = sum(w > 0.03 for w in worst)
        lines += [
            f"Run by run, over bands with ≥ 100 flags: {off} of {len(worst)} off by more than 3 points; "
            f"the largest |estimated − true| {100 * max(worst):.1f} points.",
            "",
        ]
    cuts = [r["cut_true"] for r in rows if r["cut_true"] is not None]
    if cuts:
        short = sum(c < 0.95 for c in cuts)
        lines += [
            f"The cut's true precision, run by run: lowest {100 * min(cuts):.1f}%; {short} of {len(cuts)} runs "
            "below 95%.",
            "",
        ]
    return "\n".join(lines)


def git(*args: str) -> str | None:
    """``git -C <repo> args``'s stripped output, or None where git fails or is absent."""
    try:
        p = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    except OSError:
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def commit() -> str:
    """The commit the benchmark ran at (``+dirty`` with uncommitted edits), or ``unknown``."""
    head = git("rev-parse", "--short", "HEAD")
    return (
        "unknown" if head is None else head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    )


def settings(overrides: list[str]) -> dict:
    """The settings a run of this benchmark gets from ``overrides`` (the preset's, as a dict)."""
    from pipeline.training.settings.cli import load_config

    return json.loads(json.dumps(dataclasses.asdict(load_config(PRESET, list(overrides)))))  # as the JSON holds it


def effective(overrides: list[str]) -> list[str]:
    """``overrides`` less those that restate a default (what the table calls its overrides)."""
    default = settings([])
    return [o for o in overrides if settings([o]) != default]


def same_runs(out: Path, a: argparse.Namespace, overrides: list[str]) -> dict:
    """The table at ``out.json`` (for ``--update`` / ``--rescore``), refused where its runs had
    other settings, seeds or device than this command's (its rows would not be the same runs).
    Settings are compared whole where the table records them, else (a table from before it did)
    by the overrides given."""
    flag = "--rescore" if a.rescore else "--update"
    path = out.with_suffix(".json")
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"{flag}: cannot read the table, {path} ({e})") from None
    same = old["settings"] == settings(overrides) if "settings" in old else old.get("overrides") == overrides
    if not same or old.get("seeds") != a.seeds or old.get("device") != a.device:
        raise SystemExit(
            f"{flag}: {path} was made with overrides {old.get('overrides')}, seeds {old.get('seeds')}, "
            f"device {old.get('device')}; this run has {overrides}, {a.seeds}, {a.device}: "
            + ("give the table's" if a.rescore else "run every noise instead")
        )
    return old


def kept_rows(out: Path, a: argparse.Namespace, overrides: list[str]) -> list[dict]:
    """``--update``: the rows of ``out.json`` (checked by :func:`same_runs`) for the noises not
    run now (their ``commit``: the commit that last wrote the file, unless the row names its own)."""
    old = same_runs(out, a, overrides)
    last = git("log", "-1", "--format=%h", "--", str(out.with_suffix(".json").resolve()))
    made = f"table of {last}" if last else "table before"
    return [{"commit": made, **r} for r in old["rows"] if r["noise"] not in a.noises]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--noises", nargs="+", default=NOISES)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true", help="a tiny smoke test of this script")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--storage", default="", help="where runs go (default: a new directory under runs/)")
    ap.add_argument("--out", default="", help="output path without extension")
    ap.add_argument(
        "--update",
        action="store_true",
        help="run only --noises and keep the other noises' rows of the table already at --out "
        "(for an edit that cannot change those runs; each row records the commit that made it)",
    )
    ap.add_argument(
        "--rescore",
        nargs="+",
        metavar="RUN_DIR",
        default=[],
        help="no training: every row of the table at --out again from these finished runs' files "
        "(after an edit to how the budget cuts, which changes no run; each row keeps its wall time "
        "and says when it was rescored)",
    )
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    a = ap.parse_args(argv)
    overrides = (QUICK if a.quick else []) + a.overrides
    storage = a.storage or str(ROOT / "runs" / f"budget-{time.strftime('%Y%m%d-%H%M%S')}")
    out = Path(a.out or RESULTS / ("review_budget" + ("_quick" if a.quick else "")))
    made_by = commit()
    kept, rows = kept_rows(out, a, overrides) if a.update and not a.rescore else [], []
    if a.rescore:
        rows = rescored(a.rescore, same_runs(out, a, overrides), out, overrides, made_by)
    for noise in a.noises if not a.rescore else []:
        for seed in a.seeds:
            rows.append({**one_run(noise, seed, overrides, storage, a.device), "commit": made_by})
            print(f"{noise} seed {seed}: {rows[-1]['wall_s']:.0f} s", file=sys.stderr, flush=True)
    rows = sorted(
        kept + rows, key=lambda r: (NOISES.index(r["noise"]) if r["noise"] in NOISES else len(NOISES), r["seed"])
    )
    a.noises = list(dict.fromkeys(r["noise"] for r in rows))
    publish(
        out,
        markdown(rows, a, effective(overrides)),
        {
            "preset": PRESET,
            "overrides": effective(overrides),
            "settings": settings(overrides),
            "seeds": a.seeds,
            "torch": torch.__version__,
            "device": a.device,
            "rows": rows,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
