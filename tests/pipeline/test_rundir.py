"""The run-directory contract: every output file's name lives in :mod:`pipeline.rundir`, and
the code that writes or reads a run directory uses it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipeline import rundir
from pipeline.rundir import RunDir, checkpoint_name, checkpoint_order
from tests.conftest import ROOT

FILE_NAMES = (
    rundir.METRICS,
    rundir.LABELS,
    rundir.MODEL,
    rundir.RELABEL,
    rundir.BUDGET,
    rundir.MATRIX,
    rundir.REPORT_PAGE,
    rundir.REPORT_NUMBERS,
    rundir.STATE_FILE,
    rundir.BEST_DIR,
    rundir.CRASH_MARKER,
)


def test_paths_of_a_run_directory(tmp_path):
    r = RunDir.of(tmp_path, "run")
    assert r.path == tmp_path / "run" and str(r) == str(tmp_path / "run")
    assert r.metrics == tmp_path / "run" / "metrics.json" and r.labels.name == "corrected_labels.parquet"
    assert r.report == tmp_path / "run" / "report" / "index.html"
    assert r.checkpoint(3) == tmp_path / "run" / "checkpoint_epoch_0003"
    assert r.checkpoint(3, 120) == tmp_path / "run" / "checkpoint_epoch_0003_step_000120"


def test_checkpoints_sort_in_training_order_and_only_complete_ones_count(tmp_path):
    r = RunDir(tmp_path)
    for epoch, step in ((2, None), (1, None), (2, 40), (10, None), (2, 5)):
        d = r.checkpoint(epoch, step)
        d.mkdir()
        (d / rundir.STATE_FILE).write_bytes(b"x")
    r.checkpoint(11).mkdir()  # no state file: a copy that did not finish
    assert [p.name.removeprefix(rundir.CHECKPOINT_PREFIX) for p in r.checkpoints()] == [
        "epoch_0001",
        "epoch_0002_step_000005",
        "epoch_0002_step_000040",
        "epoch_0002",
        "epoch_0010",
    ]
    assert (
        checkpoint_order(checkpoint_name(2, 7)) < checkpoint_order(checkpoint_name(2)) < checkpoint_order("epoch_0003")
    )


def _string_constants(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


@pytest.mark.parametrize("package", ["pipeline", "tune", "benchmarks"])
def test_no_output_file_name_is_spelled_outside_the_contract(package):
    """A file name written twice drifts: code names a run's files through :mod:`pipeline.rundir`."""
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        if path == ROOT / "pipeline" / "rundir.py":
            continue
        found += [f"{path.relative_to(ROOT)}:{line}: {v!r}" for line, v in _string_constants(path) if v in FILE_NAMES]
    assert not found, "\n".join(found)
