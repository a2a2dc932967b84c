"""Resume equivalence: stopping after epoch 2 and resuming gives the same run as not stopping."""

import numpy as np
import pyarrow.parquet as pq
import torch

from pipeline.checkpoint import LocalReporter
from pipeline.cli import absolutize
from pipeline.config import load_config
from pipeline.worker import run


def _cfg(data_cfg, storage, name, epochs):
    return absolutize(load_config("smoke", [
        f"data.shard_root={data_cfg.shard_root}", f"data.n_meta={data_cfg.n_meta}", f"data.n_val={data_cfg.n_val}",
        "data.max_train=0", "data.max_test=0", f"optim.epochs={epochs}", "meta.warmup_epochs=1",
        "optim.milestones=[3]", f"run.storage_path={storage}", f"run.name={name}", "run.tensorboard=false",
    ]))


def test_resumed_run_equals_uninterrupted_run(fake_shards, fake_data_cfg, tmp_path):
    quiet = lambda s: None  # noqa: E731
    full = run(_cfg(fake_data_cfg, tmp_path, "full", 3), LocalReporter(tmp_path / "full"), log=quiet)
    run(_cfg(fake_data_cfg, tmp_path, "part", 2), LocalReporter(tmp_path / "part"), log=quiet)
    ckpt = tmp_path / "part" / "checkpoints" / "epoch_0002"
    resumed = run(_cfg(fake_data_cfg, tmp_path, "part", 3), LocalReporter(tmp_path / "part", resume_from=ckpt),
                  log=quiet)

    a = torch.load(full["model"], weights_only=True)
    b = torch.load(resumed["model"], weights_only=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    ta, tb = pq.read_table(full["corrected_labels"]), pq.read_table(resumed["corrected_labels"])
    assert ta.equals(tb)
    strip = lambda r: {k: v for k, v in r.items() if k != "epoch_seconds"}  # noqa: E731
    assert strip(full["summary"]["final"]) == strip(resumed["summary"]["final"])
    assert full["summary"]["final"]["phase"] == "mslc"
    assert np.isfinite(full["summary"]["final"]["meta_loss"])
