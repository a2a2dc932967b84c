"""The console's end summary (pipeline/train.py outcome_lines), read from a run's files."""

import json

from pipeline.rundir import RunDir
from pipeline.train import outcome_lines


def _run_dir(tmp_path, rows, *, relabel_rows, threshold):
    rd = RunDir.of(tmp_path, "r")
    rd.path.mkdir(parents=True)
    rd.metrics.write_text(
        json.dumps(
            {
                "summary": {"labels": {"epochs": [2, 3], "selected_by": "the mean soft labels of epochs 2, 3"}},
                "epochs": [{"epoch": e, "val_acc": 0.8 + e / 100} for e in (1, 2, 3)],
            }
        )
    )
    budget = {
        "samples": 1000,
        "target": 0.95,
        "threshold": threshold,
        "relabel_threshold": threshold,
        "relabel_rows": relabel_rows,
        "relabel_precision": None if not relabel_rows else rows[-1]["precision"],
        "relabel_lower": None if not relabel_rows else rows[-1]["lower"],
        "rows": rows,
    }
    rd.budget.write_text(json.dumps(budget))
    return rd


def _row(t, flags, precision, lower):
    return {"threshold": t, "flags": flags, "precision": precision, "lower": lower}


def test_the_summary_points_at_relabel_csv_when_a_cut_was_chosen(tmp_path):
    rows = [_row(0.0, 300, 0.80, 0.78), _row(0.5, 200, 0.93, 0.91), _row(0.9, 100, 0.97, 0.955)]
    lines = outcome_lines(_run_dir(tmp_path, rows, relabel_rows=100, threshold=0.9), seconds=90)
    assert lines[0].startswith("done in 1.5 min; exported: the mean soft labels of epochs 2, 3 (83.00%)")
    assert lines[1].startswith("flags: 300 of 1000 labels (30.0%) differ from the given ones; estimated 80.0%")
    assert lines[2].startswith("next: review relabel.csv (100 flags with confidence >= 0.90, estimated 97.0% right")


def test_an_empty_relabel_csv_is_explained_and_the_best_cut_named(tmp_path):
    """No cut's lower bound reaches the target: the summary says relabel.csv is empty, why,
    which cut came nearest (by its lower bound, not its estimate), and how to write another."""
    rows = [_row(0.0, 300, 0.80, 0.78), _row(0.5, 200, 0.94, 0.93), _row(0.9, 20, 0.96, 0.90)]
    lines = outcome_lines(_run_dir(tmp_path, rows, relabel_rows=0, threshold=1.0), seconds=60)
    assert lines[2].startswith(
        "next: relabel.csv is empty: no cut's flags are estimated >= 95% right with 95% confidence "
        "(the best, confidence >= 0.50: 200 flags, estimated 94.0% right, 95% lower bound 93.0%)"
    )
    assert "pipeline/report.py RUN_DIR --threshold T --relabel-out FILE" in lines[2]


def test_an_empty_relabel_csv_under_the_users_own_cut_says_so(tmp_path):
    """A cut the user set (run.relabel_threshold) above every flag: the summary names that cut,
    not the budget's."""
    rows = [_row(0.0, 300, 0.80, 0.78), _row(0.5, 200, 0.97, 0.96), _row(0.9, 20, 0.98, 0.96)]
    rd = _run_dir(tmp_path, rows, relabel_rows=0, threshold=0.5)
    b = json.loads(rd.budget.read_text())
    rd.budget.write_text(json.dumps({**b, "relabel_threshold": 0.99}))
    line = outcome_lines(rd, seconds=60)[2]
    assert line.startswith("next: relabel.csv is empty: no flag has confidence >= 0.99 (run.relabel_threshold)")
