"""Cross-fitting (run.crossfit_folds): every training sample is predicted by a model that did
not train on it, and a run that asks for it reads its flags' estimate from those predictions."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from mslc.estimate import crossfit_folds
from pipeline.training.run.checkpoint import LocalReporter
from pipeline.worker import run
from tests.helpers import RECOMMENDED, smoke_cfg


def quiet(*_):
    pass


def test_each_sample_is_predicted_by_the_model_that_did_not_train_on_it(fake_shards, fake_data_cfg, tmp_path):
    """Targets that name the fold (class 0 for fold 0, class 1 for fold 1): the model of
    fold k only ever saw the other fold's class, so a held-out prediction of class 1 on fold 0
    (and 0 on fold 1) shows whose prediction each row is."""
    from pipeline.training.methods.state import build_data
    from pipeline.training.run.crossfit import heldout_predictions

    cfg = smoke_cfg(fake_data_cfg, tmp_path, "cf", 2, ["run.crossfit_folds=2", "run.crossfit_epochs=3"])
    data = build_data(cfg, torch.device("cpu"))
    n, c = len(data.labels), data.num_classes
    folds = crossfit_folds(n, 2, seed=cfg.run.seed)
    targets = folds.copy()
    lines = []
    ho = heldout_predictions(cfg, data, targets, torch.device("cpu"), log=lines.append)
    assert ho.train.shape == (n, c) and not np.isnan(ho.train).any()
    np.testing.assert_allclose(ho.train.sum(1), 1.0, rtol=1e-5)
    assert (ho.train.argmax(1) == 1 - folds).mean() > 0.95
    n_val = data.manifest["splits"]["val"]["count"]
    assert ho.clean.shape == (2 * n_val, c) and ho.clean_labels.shape == (2 * n_val,) and ho.folds == 2
    assert lines[0].startswith("cross-fitting: 2 models × 3 passes over")
    again = heldout_predictions(cfg, data, targets, torch.device("cpu"), log=quiet)
    np.testing.assert_array_equal(again.train, ho.train)  # seeded by run.seed
    soft = heldout_predictions(cfg, data, np.eye(c, dtype=np.float32)[folds], torch.device("cpu"), log=quiet)
    np.testing.assert_allclose(soft.train, ho.train, atol=1e-2)  # one-hot soft labels learn what labels do
    for bad in (folds.astype(np.float32), np.eye(c + 1, dtype=np.float32)[folds], np.eye(c, dtype=np.int64)[folds]):
        with pytest.raises(ValueError, match="integer labels or .* float soft labels as targets"):
            heldout_predictions(cfg, data, bad, torch.device("cpu"), log=quiet)


def test_a_run_reads_its_flags_estimate_from_heldout_predictions(fake_shards, fake_data_cfg, tmp_path):
    from pipeline.review.select import budget, read_table

    cfg = smoke_cfg(
        fake_data_cfg, tmp_path, "cfrun", 2, [*RECOMMENDED, "run.crossfit_folds=2", "run.crossfit_epochs=1"]
    )
    lines = []
    res = run(cfg, LocalReporter(tmp_path / "cfrun"), log=lines.append)
    assert any(line.startswith("cross-fitting done in") for line in lines)
    meta = pq.read_schema(res["corrected_labels"]).metadata
    assert meta[b"est_correct_by"].decode() == (
        "held-out transition posterior (2 cross-fitted models), calibrated on the clean validation split"
    )
    table = read_table(res["corrected_labels"])
    est = table["est_correct"]
    assert ((est >= 0) & (est <= 1)).all()
    assert "est_correct_cautious" in pq.read_schema(res["corrected_labels"]).names  # the bound's out-of-sample check
    assert ((table["est_cautious"] >= 0) & (table["est_cautious"] <= 1)).all()
    assert table["calibration"] is not None and all(b["n_eff"] >= 0 for b in table["calibration"])
    b = budget(table, target=0.95)
    assert b["estimated_by"].startswith("held-out transition posterior")
    # the out-of-sample predictions behind it, as data: one row per sample index, the clean split once per model
    ho = np.load(res["heldout_predictions"])
    n, c = len(table["given"]), ho["transition"].shape[0]
    assert ho["train"].shape == (n, c) and ho["train"].dtype == np.float32 and int(ho["folds"]) == 2
    np.testing.assert_allclose(ho["train"].sum(1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(ho["given"][table["index"]], table["given"])
    assert ho["clean"].shape == (len(ho["clean_labels"]), c) and len(ho["clean_labels"]) % 2 == 0
    np.testing.assert_allclose(ho["transition"].sum(1), 1.0)


def test_rows_the_crossfit_never_streamed_keep_the_run_models_posterior(
    fake_shards, fake_data_cfg, tmp_path, monkeypatch
):
    """A sample skipped as unreadable has no held-out prediction (a NaN row): its estimate is
    the run model's posterior under the refitted transition; every other row is the held-out one."""
    from mslc.estimate import heldout_posterior
    from mslc.metrics import label_posterior
    from pipeline.training.methods.state import build_data
    from pipeline.training.run import crossfit
    from pipeline.training.run.outputs import flag_estimate

    cfg = smoke_cfg(fake_data_cfg, tmp_path, "cfnan", 2, ["run.crossfit_folds=2"])
    data = build_data(cfg, torch.device("cpu"))
    n, c = len(data.labels), data.num_classes
    rng = np.random.default_rng(0)
    held = rng.dirichlet(np.ones(c), n)
    held[[3, 7]] = np.nan
    clean = rng.dirichlet(np.ones(c), 8)
    ho = crossfit.Heldout(held, clean, np.arange(8) % c, 2)
    monkeypatch.setattr(crossfit, "heldout_predictions", lambda *a, **k: ho)
    y_hat = rng.dirichlet(np.ones(c), n)
    t0 = np.full((c, c), 0.1 / (c - 1)) + np.eye(c) * (0.9 - 0.1 / (c - 1))
    est = flag_estimate(cfg, None, data, torch.device("cpu"), {"y_hat": y_hat, "y_tilde": y_hat}, t0, log=quiet)
    seen = ~np.isnan(held).any(1)
    r = heldout_posterior(held[seen], clean, ho.clean_labels, data.labels[seen], t0, folds=2, seed=cfg.run.seed)
    np.testing.assert_allclose(est["posterior"][seen], r["posterior"])
    np.testing.assert_allclose(est["transition"], r["transition"])
    np.testing.assert_allclose(
        est["posterior"][~seen], label_posterior(y_hat[~seen], data.labels[~seen], r["transition"])
    )
    assert est["folds"] == 2
