"""Review what a run found: the suspected label errors as pictures, and a relabel file.

    python pipeline/report.py RUN_DIR [--top K] [--shards DIR] [--threshold P [--relabel-out CSV]]

Writes ``RUN_DIR/report/index.html`` (a static page: open it from disk; its PNGs and
``numbers.json`` beside it) and ``RUN_DIR/relabel.csv`` (the flagged samples in the
``--labels`` format of ``pipeline/prepare.py``: review it, then prepare again with
``--labels RUN_DIR/relabel.csv`` for a second round). Training writes both at the end
of every run (``run.report``, ``run.report_top``, ``run.relabel_threshold``); this
command makes the page again, e.g. with another ``--top``. An existing relabel file is
never replaced (it may hold a person's edits): without ``--threshold`` it is kept; with
it, the new file goes to ``--relabel-out``, which must not exist yet. It reads the run's
``corrected_labels.parquet`` and ``metrics.json`` and, for the pictures, only the
training shards that hold the samples shown.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.review.report import load_run, write_relabel, write_report
from pipeline.rundir import RunDir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="pipeline/report.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run's directory (run.storage_path/run.name)")
    p.add_argument("--top", type=int, default=16, help="samples per class in each gallery (default 16)")
    p.add_argument(
        "--threshold",
        type=float,
        help="write a relabel file of the flagged samples whose corrected label has at least this "
        "probability (0: all flagged, as a missing RUN_DIR/relabel.csv is written)",
    )
    p.add_argument("--relabel-out", help="where that file goes (default RUN_DIR/relabel.csv)")
    p.add_argument("--shards", help="the shard directory, where it is no longer where the run read it")
    a = p.parse_args(argv)
    if a.top < 1:
        p.error(f"--top must be >= 1, got {a.top}")
    if a.threshold is not None and not 0.0 <= a.threshold <= 1.0:
        p.error(f"--threshold is a probability in [0, 1], got {a.threshold}")
    relabel = Path(a.relabel_out or RunDir(a.run_dir).relabel)
    if a.threshold is not None and relabel.exists():
        print(
            f"error: {relabel} exists (it may hold edits): choose another --relabel-out, or remove it", file=sys.stderr
        )
        return 1
    try:
        run = load_run(a.run_dir, a.shards)
        page = write_report(run, top=a.top)
        if relabel.exists():
            print(f"relabel:  {relabel} (kept as it is)")
        else:
            print(f"relabel:  {write_relabel(run, threshold=a.threshold or 0.0, path=relabel)}")
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"report:   {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
