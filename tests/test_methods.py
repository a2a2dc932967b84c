"""Every ``meta.method`` runs through the same worker loop on fake shards: the phases it
should have, finite losses, its labels in the bank, and a bit-identical resume for the
methods that keep state of their own."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline import methods
from pipeline.checkpoint import LocalReporter
from pipeline.cli import load_config
from pipeline.config import METHODS, apply_overrides
from pipeline.worker import run
from tests.test_resume import _cfg


def quiet(_):
    pass


EXPECTED_PHASES = {
    "mslc": ["warmup", "mslc", "mslc"], "ce": ["ce"] * 3, "gce": ["gce"] * 3,
    "finetune": ["ce", "ce", "finetune"], "glc": ["warmup", "glc", "glc"], "mwnet": ["warmup", "mwnet", "mwnet"],
    "bootstrap-soft": ["warmup", "bootstrap-soft", "bootstrap-soft"],
    "bootstrap-hard": ["warmup", "bootstrap-hard", "bootstrap-hard"],
    "joint-opt": ["warmup", "joint-opt", "joint-opt"], "u-correction": ["warmup", "u-correction", "u-correction"],
}


def test_phases_per_method():
    for m in METHODS:
        cfg = load_config("smoke", [f"meta.method={m}", "optim.epochs=3", "meta.warmup_epochs=1"])
        assert [methods.phase_of(cfg, e) for e in (1, 2, 3)] == EXPECTED_PHASES[m], m


@pytest.mark.parametrize("method", [m for m in METHODS if m not in ("mslc", "ce")])
def test_every_baseline_trains_and_hands_back_labels(method, fake_shards, fake_data_cfg, tmp_path):
    cfg = _cfg(fake_data_cfg, tmp_path, method, 3)
    cfg = apply_overrides(cfg, [f"meta.method={method}"])
    res = run(cfg, LocalReporter(tmp_path / method), log=quiet)
    final = res["summary"]["final"]
    assert final["phase"] == EXPECTED_PHASES[method][-1]
    assert np.isfinite(final["train_loss"]) and 0.0 <= final["val_acc"] <= 1.0
    t = pq.read_table(res["corrected_labels"]).to_pydict()
    assert t["index"] == list(range(500))
    probs = np.asarray(t["corrected_prob"], dtype=float)
    assert np.all(probs > 0) and np.all(probs <= 1.0 + 1e-6)
    if method == "mwnet":
        assert np.isfinite(final["meta_loss"])
    if method in ("bootstrap-soft", "bootstrap-hard", "u-correction", "joint-opt"):
        assert (probs < 0.999).any()  # the table holds its targets, not the given one-hots


@pytest.mark.parametrize("method", ["mwnet", "glc", "u-correction"])
def test_resume_equivalence_for_stateful_baselines(method, fake_shards, fake_data_cfg, tmp_path):
    def cfg(name, epochs):
        return apply_overrides(_cfg(fake_data_cfg, tmp_path, name, epochs), [f"meta.method={method}"])

    full = run(cfg("full", 3), LocalReporter(tmp_path / "full"), log=quiet)
    run(cfg("part", 2), LocalReporter(tmp_path / "part"), log=quiet)
    ckpt = tmp_path / "part" / "checkpoints" / "epoch_0002"
    resumed = run(cfg("part", 3), LocalReporter(tmp_path / "part", resume_from=ckpt), log=quiet)
    a = torch.load(full["model"], weights_only=True)
    b = torch.load(resumed["model"], weights_only=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert pq.read_table(full["corrected_labels"]).equals(pq.read_table(resumed["corrected_labels"]))
