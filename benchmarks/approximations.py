"""Accuracy of MSLC's cheaper steps against the exact one, over seeds.

    python benchmarks/approximations.py [--seeds 0 1 2] [--preset fmnist-sym40] [key=value ...]

Each variant runs the preset's full schedule once per seed in one process (the loop Ray
Train runs, as ``benchmarks/fmnist.py`` does): ``exact`` (the preset as it is), ``lagged``
(``mslc.lagged=true``: the real step reuses the virtual step's gradient, one backward
fewer) and ``last layer + every 5`` (``mslc.meta_scope=last mslc.meta_every=5``, the
cheapest approximation in ``benchmarks/step_cost.py``). The table gives mean ± std over
the seeds of the test accuracy at the epoch chosen on clean validation (``best``), the
mean of the last 5 epochs (``last5``) and the accuracy of the exported labels, and each
variant's difference from exact. Their step costs are in ``benchmarks/results/step_cost.md``.
Writes ``benchmarks/results/approximations.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch
from common import label_epochs, publish  # benchmarks/common.py, beside this script
from fmnist import NO_CROSSFIT, one_row

RESULTS = ROOT / "benchmarks" / "results"
VARIANTS = {
    "exact": [],
    "lagged": ["mslc.lagged=true"],
    "last layer + every 5": ["mslc.meta_scope=last", "mslc.meta_every=5"],
}
FIELDS = (("best", "best"), ("last5", "last5"), ("label_all", "label acc"))


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def summarize(rows: list[dict], names: list[str]) -> list[dict]:
    """Per variant in ``names`` (exact first): mean and std over seeds of each field, and
    the mean's difference from exact."""
    out = []
    for name in names:
        mine = [r for r in rows if r["variant"] == name]
        s = {"variant": name, "seeds": [r["seed"] for r in mine], "wall_s": statistics.mean(r["wall_s"] for r in mine)}
        for key, _ in FIELDS:
            s[key], s[f"{key}_std"] = mean_std([100 * r[key] for r in mine])
        out.append(s)
    for s in out:
        for key, _ in FIELDS:
            s[f"{key}_vs_exact"] = s[key] - out[0][key]
    return out


def markdown(summary: list[dict], rows: list[dict], command: str) -> str:
    md = [
        "# MSLC approximations: accuracy against the exact step",
        "",
        f"`{command}`  ",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, CPU; torch {torch.__version__}. "
        "Test accuracy and label accuracy in %, mean ± std over the seeds; Δ: the mean's difference from exact.",
        "",
        "| variant | seeds | best | Δ best | last5 | Δ last5 | label acc | Δ label acc | wall s (mean) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        cells = [f"{s[k]:.2f} ± {s[k + '_std']:.2f} | {s[k + '_vs_exact']:+.2f}" for k, _ in FIELDS]
        md.append(f"| {s['variant']} | {len(s['seeds'])} | {' | '.join(cells)} | {s['wall_s']:.0f} |")
    md += [
        "",
        "Per run:",
        "",
        "| variant | seed | best | last5 | label acc | labels from epochs | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    md += [
        f"| {r['variant']} | {r['seed']} | {100 * r['best']:.2f} | {100 * r['last5']:.2f} | "
        f"{100 * r['label_all']:.2f} | {', '.join(map(str, label_epochs(r)))} | {r['wall_s']:.0f} |"
        for r in rows
    ]
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--preset", default="fmnist-sym40")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--storage", default=str(ROOT / "runs" / "benchmarks"))
    p.add_argument("--out", default=str(RESULTS / "approximations"), help="output path without extension")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    a = p.parse_args(argv)
    if a.variants[0] != "exact":
        p.error("the first variant must be exact: the others are compared with it")
    rows = []
    for seed in a.seeds:
        for name in a.variants:
            print(f"{a.preset} {name} seed {seed}", flush=True)
            row = one_row(
                a.preset,
                "mslc",
                seed,
                [*NO_CROSSFIT, *VARIANTS[name], *a.overrides],
                Path(a.storage).resolve(),
                torch.device("cpu"),
            )
            rows.append({"variant": name, **row})
    summary = summarize(rows, a.variants)
    command = f"python benchmarks/approximations.py {' '.join(argv if argv is not None else sys.argv[1:])}".strip()
    publish(a.out, markdown(summary, rows, command), {"summary": summary, "rows": rows, "variants": VARIANTS})
    return 0


if __name__ == "__main__":
    sys.exit(main())
