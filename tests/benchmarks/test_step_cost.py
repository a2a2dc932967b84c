"""benchmarks/step_cost.py's phase table: the profiler's labels on CPU, and the clock a CUDA
run uses (mslc.meta_step.PhaseTimer; on CPU a host clock) on the same phases."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def step_cost():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import step_cost

        yield step_cost
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


@pytest.mark.parametrize("clock", ["profiler", "events"])
def test_both_clocks_time_the_labelled_phases_of_an_exact_step(step_cost, clock):
    from mslc.meta_step import PHASES

    row = step_cost.phases("MSLC soft, exact (forward-mode JVP)", "cpu", 2, 8, "small-cnn", clock=clock)
    assert row["clock"] == clock and set(row["ms"]) == {*PHASES, "other"}
    inside = sum(row["ms"][p] for p in PHASES)
    assert all(row["ms"][p] > 0 for p in PHASES), row["ms"]  # the exact forward-mode step has every phase
    assert 0 < inside <= row["profiled_ms_per_step"] * 1.05
