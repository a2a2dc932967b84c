"""Failures contained: an exception that is not a PipelineError on one of two ranks stops
the other within seconds, with the first error shown, instead of leaving the other waiting in a
collective until the backend's half-hour timeout."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from pipeline.rundir import RunDir
from tests.dist_helpers import HOLD_S, run_ranks_to_exit
from tests.helpers import smoke_cfg


def _train_and_fail_on_rank_1(rank, world, data_cfg, storage):
    from pipeline.training.methods import registry as methods
    from pipeline.training.run.checkpoint import LocalReporter
    from pipeline.training.settings.config import DataConfig
    from pipeline.worker import run

    real = methods.CE.train_step
    calls = [0]

    def step(self, st, data, b):
        calls[0] += 1
        if rank == 1 and calls[0] == 3:
            (Path(storage) / "failed-at").write_text(str(time.time()))
            raise RuntimeError("injected transform failure")
        return real(self, st, data, b)

    methods.CE.train_step = step
    cfg = smoke_cfg(DataConfig(**data_cfg), Path(storage), "fail", 2, ("meta.method=ce",))
    run(cfg, LocalReporter(Path(storage) / "fail"), log=lambda s: None)


def test_an_exception_on_one_rank_stops_every_rank_within_seconds(fake_shards, fake_data_cfg, tmp_path):
    out = run_ranks_to_exit(
        _train_and_fail_on_rank_1, 2, tmp_path / "procs", dataclasses.asdict(fake_data_cfg), str(tmp_path), timeout=240
    )
    assert all(o["exitcode"] is not None for o in out), "a rank hung"
    assert out[0]["exitcode"] != 0 and out[1]["exitcode"] != 0
    assert "RuntimeError: injected transform failure" in out[1]["stderr"]  # its own traceback
    assert "rank 0: stopping, because rank 1 failed: RuntimeError: injected transform failure" in out[0]["stderr"]
    # the failing rank's process outlives its error by HOLD_S seconds (as a Ray worker actor
    # would); rank 0 does not wait for that, nor for the collective's timeout
    failed_at = float((tmp_path / "failed-at").read_text())
    assert out[0]["ended"] - failed_at < 10 < HOLD_S
    assert not (RunDir(tmp_path / "fail").model).exists()
