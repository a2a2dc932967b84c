"""The review page of the default run, as the README shows it.

    python benchmarks/review_screenshot.py [--run-dir RUN_DIR] [--top 16]

Trains the default preset (``fmnist-sym40``, seed 0: what ``make run`` trains) in one
process, as ``benchmarks/fmnist.py`` does, unless ``--run-dir`` names a finished run; then
makes its report again (timed: reading the table, choosing the samples, reading their
shards, drawing) and renders the page's top in headless Chromium. Writes
``benchmarks/results/review_report.png`` and ``review_report.md`` / ``.json`` (the page's
numbers, read back from it, and the report's time and size).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch
from common import publish  # benchmarks/common.py, beside this script
from fmnist import one_row

from pipeline.review.browser import screenshot
from pipeline.review.page import read_page
from pipeline.review.report import load_run, write_report
from pipeline.training.settings.presets import DEFAULT_PRESET

RESULTS = ROOT / "benchmarks" / "results"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--run-dir", help="a finished run (default: train the default preset, seed 0)")
    p.add_argument("--top", type=int, default=16)
    p.add_argument("--storage", default=str(ROOT / "runs" / "benchmarks"))
    p.add_argument("--out", default=str(RESULTS / "review_report"), help="output path without extension")
    a = p.parse_args(argv)
    if a.run_dir:
        run_dir = Path(a.run_dir)
    else:
        run_dir = Path(
            one_row(DEFAULT_PRESET, "mslc", 0, [], Path(a.storage).resolve(), torch.device("cpu"))["run_dir"]
        )
    t0 = time.time()
    index = write_report(load_run(run_dir), top=a.top)
    seconds = time.time() - t0
    files = [f for f in index.parent.rglob("*") if f.is_file()]
    png = screenshot(index, Path(a.out).with_suffix(".png"), width=1280, height=2600)
    numbers, sources = read_page(index.read_text())
    command = f"python benchmarks/review_screenshot.py {' '.join(argv if argv is not None else sys.argv[1:])}".strip()
    keys = (
        "samples",
        "flagged",
        "flagged_share",
        "detect_precision",
        "detect_recall",
        "detect_f1",
        "label_acc_given",
        "label_acc_corrected",
    )
    md = [
        "# The review page of the default run",
        "",
        f"`{command}`  ",
        f"Machine: {platform.machine()}, CPU, torch {torch.__version__}. Run: `{run_dir.name}`. "
        f"Screenshot: `{png.name}` (the page's top, 1280×2600 CSS pixels).",
        "",
        f"Report: {seconds:.1f} s, {len(files)} files, {sum(f.stat().st_size for f in files) / 2**20:.1f} MiB, "
        f"{sum(s.startswith('img/') for s in sources)} thumbnails.",
        "",
        "| number on the page | value |",
        "|---|---|",
    ]
    md += [
        f"| {k} | {numbers[k]:,.0f} |" if k in ("samples", "flagged") else f"| {k} | {100 * numbers[k]:.2f}% |"
        for k in keys
        if k in numbers
    ]
    publish(
        a.out,
        "\n".join(md) + "\n",
        {
            "run_dir": str(run_dir),
            "report_seconds": seconds,
            "files": len(files),
            "numbers": {k: numbers.get(k) for k in keys},
            "command": command,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
