"""tune/sweep.py: the search space and its config handling. A 2-trial sweep through Ray Tune,
its table ranked by clean validation accuracy, runs on the autoscaling local cluster
(tests/cluster/test_local_cluster.py)."""

from __future__ import annotations

import pytest

from pipeline.training.settings.cli import load_config
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
