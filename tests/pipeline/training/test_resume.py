"""Resume equivalence: stopping after epoch 2 and resuming gives the same run as not stopping."""

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.training.run.checkpoint import LocalReporter
from pipeline.worker import run
from tests.helpers import RECOMMENDED, smoke_cfg


@pytest.mark.parametrize("extra", [(), RECOMMENDED], ids=["paper", "recommended"])
def test_resumed_run_equals_uninterrupted_run(fake_shards, fake_data_cfg, tmp_path, extra):
    quiet = lambda s: None  # noqa: E731
    full = run(smoke_cfg(fake_data_cfg, tmp_path, "full", 3, extra), LocalReporter(tmp_path / "full"), log=quiet)
    run(smoke_cfg(fake_data_cfg, tmp_path, "part", 2, extra), LocalReporter(tmp_path / "part"), log=quiet)
    ckpt = tmp_path / "part" / "checkpoints" / "epoch_0002"
    resumed = run(
        smoke_cfg(fake_data_cfg, tmp_path, "part", 3, extra),
        LocalReporter(tmp_path / "part", resume_from=ckpt),
        log=quiet,
    )

    a = torch.load(full["model"], weights_only=True)
    b = torch.load(resumed["model"], weights_only=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    ta, tb = pq.read_table(full["corrected_labels"]), pq.read_table(resumed["corrected_labels"])
    assert ta.equals(tb)

    def strip(r):
        return {
            k: None if isinstance(v, float) and np.isnan(v) else v  # (NaN != NaN)
            for k, v in r.items()
            if k != "epoch_seconds"
        }

    assert strip(full["summary"]["final"]) == strip(resumed["summary"]["final"])
    assert full["summary"]["final"]["phase"] == "mslc"
    assert np.isfinite(full["summary"]["final"]["meta_loss"])


def _two_rank_run(rank, world, data_cfg, storage):
    from pipeline.training.settings.config import DataConfig

    cfg = smoke_cfg(DataConfig(**data_cfg), storage, "two", 2)
    res = run(cfg, LocalReporter(storage / "two"), log=lambda s: None)
    return res["summary"]["final"]["samples"]


def test_resume_with_a_different_number_of_workers(fake_shards, fake_data_cfg, tmp_path):
    """Two ranks (sharded bank) for 2 epochs, then one rank resumes: the bank is re-sharded."""
    import dataclasses

    from tests.dist_helpers import run_ranks

    samples = run_ranks(_two_rank_run, 2, tmp_path / "procs", dataclasses.asdict(fake_data_cfg), tmp_path)
    assert samples == [500, 500]
    ckpt = tmp_path / "two" / "checkpoints" / "epoch_0002"
    saved = torch.load(ckpt / "state.pt", weights_only=True)
    assert saved["bank"]["y_tilde"].shape == (500, 10) and not torch.isnan(saved["bank"]["alpha"]).any()
    one = run(
        smoke_cfg(fake_data_cfg, tmp_path, "one", 3),
        LocalReporter(tmp_path / "one", resume_from=ckpt),
        log=lambda s: None,
    )
    assert [h["epoch"] for h in json_epochs(one)] == [1, 2, 3]
    t = pq.read_table(one["corrected_labels"]).to_pydict()
    assert t["index"] == list(range(500)) and all(p > 0.1 for p in t["corrected_prob"])


def json_epochs(result):
    import json

    return json.loads(Path(result["metrics"]).read_text())["epochs"]


def test_checkpoints_keep_the_latest_and_the_best_on_validation(fake_shards, fake_data_cfg, tmp_path):
    quiet = lambda s: None  # noqa: E731
    res = run(smoke_cfg(fake_data_cfg, tmp_path, "keep", 4), LocalReporter(tmp_path / "keep", keep=2), log=quiet)
    root = tmp_path / "keep" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["best", "epoch_0003", "epoch_0004"]
    best = torch.load(root / "best" / "state.pt", weights_only=True)
    assert best["epoch"] == res["summary"]["selected_epoch"]
    everything = run(smoke_cfg(fake_data_cfg, tmp_path, "all", 2), LocalReporter(tmp_path / "all", keep=0), log=quiet)
    assert sorted(p.name for p in (tmp_path / "all" / "checkpoints").glob("epoch_*")) == ["epoch_0001", "epoch_0002"]
    assert everything["summary"]["final"]["epoch"] == 2


# -- inside an epoch ------------------------------------------------------------------


def _run_until_crash(cfg_dict: dict, run_dir: str) -> None:
    """A child process: the run dies (``os._exit``) at ``scale.crash_at_step``."""
    from pipeline.training.settings.config import Config

    run(Config.from_dict(cfg_dict), LocalReporter(run_dir, keep=0), log=lambda s: None)


def _crash_in_child(cfg, run_dir) -> int:
    import multiprocessing

    p = multiprocessing.get_context("spawn").Process(target=_run_until_crash, args=(cfg.to_dict(), str(run_dir)))
    p.start()
    p.join(300)
    return p.exitcode


def _assert_same_run(a: dict, b: dict) -> None:
    ma, mb = torch.load(a["model"], weights_only=True), torch.load(b["model"], weights_only=True)
    for k in ma:
        torch.testing.assert_close(ma[k], mb[k], rtol=0, atol=0, msg=k)
    assert pq.read_table(a["corrected_labels"]).equals(pq.read_table(b["corrected_labels"]))

    def strip(r):
        return {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in r.items() if k != "epoch_seconds"}

    assert [strip(h) for h in json_epochs(a)] == [strip(h) for h in json_epochs(b)]


@pytest.mark.parametrize(
    "extra",
    [(), ("data.transform=cifar",), ("meta.method=u-correction",), RECOMMENDED],
    ids=["mslc", "augmented", "ucorrection", "recommended"],
)
def test_crash_inside_an_epoch_then_resume_is_bit_identical(fake_shards, fake_data_cfg, tmp_path, extra):
    """Checkpoints every 5 steps (8 steps an epoch); the run dies at run step 12 (epoch 2,
    step 4); resumed from the checkpoint at epoch 2 step 2, it ends bit-identical to a
    run never interrupted: weights, label table, every epoch's record. With random
    augmentation (the global RNG), a method whose epoch start fits a model (U-correction), and
    the recommended MSLC (its transition estimated at epoch 2's start, trusted samples drawn
    from the meta sampler)."""
    every = ("run.checkpoint_every_steps=5", *extra)
    quiet = lambda s: None  # noqa: E731
    plain = run(smoke_cfg(fake_data_cfg, tmp_path, "plain", 3, extra), LocalReporter(tmp_path / "plain"), log=quiet)
    full = run(smoke_cfg(fake_data_cfg, tmp_path, "full", 3, every), LocalReporter(tmp_path / "full"), log=quiet)
    _assert_same_run(plain, full)  # checkpointing itself changes nothing
    assert sorted(p.name for p in (tmp_path / "full" / "checkpoints").glob("epoch_*")) == [
        "epoch_0003",
        "epoch_0003_step_000004",
    ]  # the latest 2 kept (saved at run steps 5, 10, 15, 20 too)

    crashed = smoke_cfg(fake_data_cfg, tmp_path, "part", 3, (*every, "scale.crash_at_step=12"))
    assert _crash_in_child(crashed, tmp_path / "part") == 1
    ckpts = sorted(p.name for p in (tmp_path / "part" / "checkpoints").glob("epoch_*"))
    assert ckpts == ["epoch_0001", "epoch_0001_step_000005", "epoch_0002_step_000002"]
    logs: list[str] = []
    resumed = run(
        smoke_cfg(fake_data_cfg, tmp_path, "part", 3, every),
        LocalReporter(tmp_path / "part", resume_from=tmp_path / "part" / "checkpoints" / ckpts[-1]),
        log=logs.append,
    )
    assert any(
        "resumed inside epoch 2 at its step 2 (run step 10)" in line and "exact continuation" in line for line in logs
    ), logs
    _assert_same_run(full, resumed)


def _two_rank_mid_epoch(rank, world, data_cfg, storage):
    from pipeline.training.settings.config import DataConfig

    cfg = smoke_cfg(DataConfig(**data_cfg), storage, "two", 2, ("run.checkpoint_every_steps=3",))
    run(cfg, LocalReporter(storage / "two", keep=0), log=lambda s: None)


def test_resume_inside_an_epoch_at_another_worker_count(fake_shards, fake_data_cfg, tmp_path):
    """Two ranks (4 steps an epoch each) checkpoint at run step 6 (epoch 2, step 2); one
    rank resumes there (an elastic shrink): the bank is re-sharded, the epoch ends having
    trained on every sample exactly once, and the table has every sample with α set."""
    import dataclasses

    from tests.dist_helpers import run_ranks

    run_ranks(_two_rank_mid_epoch, 2, tmp_path / "procs", dataclasses.asdict(fake_data_cfg), tmp_path)
    ckpt = tmp_path / "two" / "checkpoints" / "epoch_0002_step_000002"
    pos = torch.load(ckpt / "state.pt", weights_only=True)["position"]
    assert (pos["epoch"], pos["step"], pos["world"]) == (2, 2, 2)
    seen = np.unpackbits(pos["seen"].numpy(), count=500).astype(bool)
    assert seen.sum() == 2 * 2 * 64  # two steps of 64 on each rank

    logs: list[str] = []
    one = run(
        smoke_cfg(fake_data_cfg, tmp_path, "one", 2, ("run.checkpoint_every_steps=3",)),
        LocalReporter(tmp_path / "one", resume_from=ckpt),
        log=logs.append,
    )
    assert any("now 1: the bank re-sharded" in line for line in logs), logs
    epochs = json_epochs(one)
    assert [h["epoch"] for h in epochs] == [1, 2]
    assert epochs[1]["samples"] == 500  # 256 before the resize, the 244 untrained ones after it
    t = pq.read_table(one["corrected_labels"]).to_pydict()
    assert t["index"] == list(range(500)) and None not in t["alpha"]


def test_checkpoint_clock_by_steps_and_by_minutes(monkeypatch):
    from pipeline.training.run import position

    c = position.CheckpointClock(5, 0.0, check_every=50)
    assert [s for s in range(1, 21) if c.due(s, s)] == [5, 10, 15, 20]
    now = [1000.0]
    monkeypatch.setattr(position.time, "time", lambda: now[0])
    c = position.CheckpointClock(0, 1.0, check_every=50)
    assert not c.due(50, 50)  # no time has passed
    now[0] += 61
    assert not c.due(51, 51)  # the clock is read only every 50 steps of the epoch
    assert c.due(100, 100)
    c.saved()
    assert not c.due(150, 150)


def _rank_buffers(rank, world, data_cfg, storage):
    """Each rank's own batch-norm buffers after 1 epoch of 2 ranks."""
    from mslc import dist as mdist
    from pipeline.training.methods import registry as methods
    from pipeline.training.methods.state import build_data, build_state
    from pipeline.training.run.epoch import train_epoch
    from pipeline.training.settings.config import DataConfig

    cfg = smoke_cfg(DataConfig(**data_cfg), storage, "bn", 2)
    device = torch.device("cpu")
    data = build_data(cfg, device)
    st = build_state(cfg, data, device)
    st.method = methods.build_method(cfg, device)
    train_epoch(cfg, st, data, 1, device, storage / "bn")
    before = {k: v.clone() for k, v in st.model.state_dict().items() if "running" in k}
    mdist.average_buffers_(st.model)
    after = {k: v.clone() for k, v in st.model.state_dict().items() if "running" in k}
    return before, after


def test_batch_norm_statistics_are_averaged_across_ranks(fake_shards, fake_data_cfg, tmp_path):
    """Only gradients are averaged per step, so the two ranks' running statistics differ
    after an epoch; averaged (as the loop does before evaluating and saving) they agree."""
    import dataclasses

    from tests.dist_helpers import run_ranks

    (b0, a0), (b1, a1) = run_ranks(_rank_buffers, 2, tmp_path / "procs", dataclasses.asdict(fake_data_cfg), tmp_path)
    assert b0 and any(not torch.equal(b0[k], b1[k]) for k in b0)  # they drifted apart
    for k in a0:
        torch.testing.assert_close(a0[k], a1[k], rtol=0, atol=0, msg=k)
        torch.testing.assert_close(a0[k], (b0[k] + b1[k]) / 2, msg=k)
