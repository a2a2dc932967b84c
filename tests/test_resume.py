"""Resume equivalence: stopping after epoch 2 and resuming gives the same run as not stopping."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.training.checkpoint import LocalReporter
from pipeline.training.cli import absolutize, load_config
from pipeline.training.loop import run


def _cfg(data_cfg, storage, name, epochs, extra=()):
    return absolutize(load_config("smoke", [*extra,
        f"data.shard_root={data_cfg.shard_root}", f"data.n_meta={data_cfg.n_meta}", f"data.n_val={data_cfg.n_val}",
        "data.max_train=0", "data.max_test=0", f"optim.epochs={epochs}", "meta.warmup_epochs=1",
        "optim.milestones=[3]", f"run.storage_path={storage}", f"run.name={name}", "run.tensorboard=false",
    ]))


@pytest.mark.parametrize("extra", [(), ("meta.corrector=class", "meta.virtual_lr=initial")], ids=["paper", "class"])
def test_resumed_run_equals_uninterrupted_run(fake_shards, fake_data_cfg, tmp_path, extra):
    quiet = lambda s: None  # noqa: E731
    full = run(_cfg(fake_data_cfg, tmp_path, "full", 3, extra), LocalReporter(tmp_path / "full"), log=quiet)
    run(_cfg(fake_data_cfg, tmp_path, "part", 2, extra), LocalReporter(tmp_path / "part"), log=quiet)
    ckpt = tmp_path / "part" / "checkpoints" / "epoch_0002"
    resumed = run(_cfg(fake_data_cfg, tmp_path, "part", 3, extra),
                  LocalReporter(tmp_path / "part", resume_from=ckpt), log=quiet)

    a = torch.load(full["model"], weights_only=True)
    b = torch.load(resumed["model"], weights_only=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    ta, tb = pq.read_table(full["corrected_labels"]), pq.read_table(resumed["corrected_labels"])
    assert ta.equals(tb)
    strip = lambda r: {k: None if isinstance(v, float) and np.isnan(v) else v  # noqa: E731  (NaN != NaN)
                       for k, v in r.items() if k != "epoch_seconds"}
    assert strip(full["summary"]["final"]) == strip(resumed["summary"]["final"])
    assert full["summary"]["final"]["phase"] == "mslc"
    assert np.isfinite(full["summary"]["final"]["meta_loss"])


def _two_rank_run(rank, world, data_cfg, storage):
    from pipeline.training.config import DataConfig

    cfg = _cfg(DataConfig(**data_cfg), storage, "two", 2)
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
    one = run(_cfg(fake_data_cfg, tmp_path, "one", 3), LocalReporter(tmp_path / "one", resume_from=ckpt),
              log=lambda s: None)
    assert [h["epoch"] for h in json_epochs(one)] == [1, 2, 3]
    t = pq.read_table(one["corrected_labels"]).to_pydict()
    assert t["index"] == list(range(500)) and all(p > 0.1 for p in t["corrected_prob"])


def json_epochs(result):
    import json

    return json.loads(open(result["metrics"]).read())["epochs"]


def test_checkpoints_keep_the_latest_and_the_best_on_validation(fake_shards, fake_data_cfg, tmp_path):
    quiet = lambda s: None  # noqa: E731
    res = run(_cfg(fake_data_cfg, tmp_path, "keep", 4), LocalReporter(tmp_path / "keep", keep=2), log=quiet)
    root = tmp_path / "keep" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["best", "epoch_0003", "epoch_0004"]
    best = torch.load(root / "best" / "state.pt", weights_only=True)
    assert best["epoch"] == res["summary"]["selected_epoch"]
    everything = run(_cfg(fake_data_cfg, tmp_path, "all", 2), LocalReporter(tmp_path / "all", keep=0), log=quiet)
    assert sorted(p.name for p in (tmp_path / "all" / "checkpoints").glob("epoch_*")) == ["epoch_0001", "epoch_0002"]
    assert everything["summary"]["final"]["epoch"] == 2
