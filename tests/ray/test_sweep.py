"""tune/sweep.py: the search space, and a 2-trial sweep of the smoke preset through Ray
Tune whose table is ranked by clean validation accuracy."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from pipeline.rundir import RunDir
from pipeline.training.settings.cli import load_config
from tests.conftest import ROOT, ray_env
from tune import sweep


def test_warmup_choices_leave_mslc_epochs():
    assert sweep.warmup_choices(3) == [1, 2]
    assert sweep.warmup_choices(120) == [12, 24, 48, 72]
    assert all(w < 10 for w in sweep.warmup_choices(10))


def test_trial_config_applies_the_swept_values():
    base = load_config("smoke").to_dict()
    cfg = sweep.trial_config(
        base, {"warmup_epochs": 2, "alpha_lr": 3e-4, "beta_lr": 2e-3, "virtual_lr_scale": 10.0}, "trial_x", "/tmp/r"
    )
    assert (cfg.meta.warmup_epochs, cfg.mslc.alpha_lr, cfg.mslc.beta_lr, cfg.mslc.virtual_lr_scale) == (
        2,
        3e-4,
        2e-3,
        10.0,
    )
    assert cfg.run.name == "trial_x" and cfg.run.storage_path == "/tmp/r"


def test_setting_a_swept_key_is_refused():
    with pytest.raises(Exception, match="mslc.alpha_lr is swept"):
        sweep.parse(["--config", "smoke", "mslc.alpha_lr=0.1"])


def test_two_trial_sweep_ranks_by_validation(tmp_path):
    env = ray_env()
    out = subprocess.run(
        [
            sys.executable,
            "tune/sweep.py",
            "--config",
            "smoke",
            "--samples",
            "2",
            "--name",
            "s",
            f"data.shard_root={tmp_path / 'shards'}",
            f"run.storage_path={tmp_path / 'runs'}",
            "scale.cpus_per_worker=0.5",
            "scale.threads=1",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "best configuration (by val_acc)" in out.stdout
    rows = list(csv.DictReader((tmp_path / "runs" / "s" / "best_configs.csv").read_text().splitlines()))
    assert len(rows) == 2
    assert (tmp_path / "runs" / "s" / "best_configs.md").read_text().startswith("Sweep ranked by val_acc")
    vals = [float(r["best_val_acc"]) for r in rows]
    assert vals == sorted(vals, reverse=True)
    for r in rows:  # each row agrees with its own run's per-epoch metrics, chosen by validation
        m = json.loads(RunDir(r["run_dir"]).metrics.read_text())
        epochs = m["epochs"]
        best = max(epochs, key=lambda e: e["val_acc"])
        assert float(r["best_val_acc"]) == pytest.approx(best["val_acc"])
        assert float(r["test_acc_at_best_val"]) == pytest.approx(best["test_acc"])
        assert m["config"]["mslc"]["alpha_lr"] == pytest.approx(float(r["alpha_lr"]))
        assert m["config"]["meta"]["warmup_epochs"] == int(r["warmup_epochs"])
        assert os.listdir(RunDir(r["run_dir"]).tensorboard)


def test_the_space_holds_the_keys_the_method_reads():
    assert sweep.swept_names(load_config("smoke")) == ["warmup_epochs", "alpha_lr", "beta_lr", "virtual_lr_scale"]
    assert sweep.swept_names(load_config("smoke", ["meta.method=mwnet"])) == [
        "warmup_epochs",
        "alpha_lr",
        "virtual_lr_scale",
    ]
    assert sweep.swept_names(load_config("smoke", ["meta.method=glc"])) == ["warmup_epochs"]
    with pytest.raises(Exception, match="meta.method=ce reads none of the swept keys"):
        sweep.parse(["--config", "smoke", "meta.method=ce"])
