"""Config validation, presets, and the command line's errors (no Ray is started here)."""

import os
import subprocess
import sys

import pytest

from pipeline.training.settings.cli import load_config
from pipeline.training.settings.config import Config, ConfigError, all_keys, apply_overrides
from pipeline.training.settings.presets import PRESETS
from tests.conftest import ROOT


def run_cli(*args, timeout=120):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_validates_and_round_trips(name):
    cfg = PRESETS[name]()
    assert Config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("name", ["fmnist-sym40", "fmnist-asym40", "folder", "clothing1m"])
def test_user_facing_presets_run_the_class_aware_corrector_and_the_paper_one_is_one_option_away(name):
    m = PRESETS[name]().mslc
    assert (m.corrector, m.weight_decay, m.virtual_lr, m.alpha_lr, m.beta_lr) == ("class", 0.0, "initial", 2e-4, 2e-4)
    assert (m.trusted_passes, m.transition, m.alpha_prior) == (10.0, "estimated", "prediction")
    assert (m.posterior_mix, m.mix_min_concentration) == (0.75, 0.5)
    assert load_config(name, ["mslc.corrector=loss"]).mslc.corrector == "loss"
    for paper in ("cifar10-sym40", "cifar100-sym40", "smoke"):  # the paper's reproductions keep its settings
        p = PRESETS[paper]().mslc
        assert (p.corrector, p.weight_decay, p.virtual_lr, p.alpha_lr, p.beta_lr) == (
            "loss",
            1e-4,
            "current",
            1e-3,
            1e-3,
        )
        assert (p.trusted_passes, p.transition, p.alpha_prior, p.posterior_mix) == (0.0, "none", "none", 0.0)


def test_overrides_are_typed_and_validated():
    cfg = load_config(
        "smoke", ["optim.lr=0.2", "optim.milestones=[2,3]", "run.tensorboard=false", "mslc.loss_mode=hard"]
    )
    assert cfg.optim.lr == 0.2 and cfg.optim.milestones == [2, 3] and cfg.run.tensorboard is False
    assert cfg.mslc.loss_mode == "hard"
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'"):
        apply_overrides(cfg, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="optim.lr must be > 0"):
        apply_overrides(cfg, ["optim.lr=-1"])
    with pytest.raises(ConfigError, match="cannot parse 'abc' as int"):
        apply_overrides(cfg, ["optim.epochs=abc"])
    with pytest.raises(ConfigError, match="meta.warmup_epochs"):
        apply_overrides(cfg, ["meta.warmup_epochs=5"])
    with pytest.raises(ConfigError, match="unknown config key 'data.colour'"):
        Config.from_dict({"data": {"colour": 1}})
    with pytest.raises(ConfigError, match="mslc.trusted_passes must be >= 0"):
        apply_overrides(cfg, ["mslc.trusted_passes=-1"])
    with pytest.raises(ConfigError, match="mslc.transition must be one of"):
        apply_overrides(cfg, ["mslc.transition=known"])
    with pytest.raises(ConfigError, match="mslc.alpha_prior must be one of"):
        apply_overrides(cfg, ["mslc.alpha_prior=given"])
    with pytest.raises(ConfigError, match=r"mslc.posterior_mix must be in \[0, 1\]"):
        apply_overrides(cfg, ["mslc.posterior_mix=1.5"])
    with pytest.raises(ConfigError, match="mslc.mix_min_concentration needs the estimated noise transition"):
        apply_overrides(cfg, ["mslc.posterior_mix=0.5", "mslc.mix_min_concentration=0.5"])
    with pytest.raises(ConfigError, match="run.crossfit_folds is 0 .off. or the number of folds"):
        apply_overrides(cfg, ["run.crossfit_folds=1"])
    with pytest.raises(ConfigError, match="run.crossfit_epochs must be >= 1"):
        apply_overrides(cfg, ["run.crossfit_epochs=0"])
    new = apply_overrides(
        cfg, ["mslc.trusted_passes=2.5", "mslc.transition=estimated", "mslc.alpha_prior=prediction"]
    ).mslc
    assert (new.trusted_passes, new.transition, new.alpha_prior) == (2.5, "estimated", "prediction")


def test_config_file(tmp_path):
    f = tmp_path / "c.json"
    f.write_text('{"preset": "smoke", "optim": {"epochs": 4}}')
    cfg = load_config(str(f), ["optim.lr=0.01"])
    assert cfg.optim.epochs == 4 and cfg.optim.lr == 0.01 and cfg.data.max_train == 1500
    f.write_text("{oops")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(str(f))


def test_help_lists_presets_and_keys():
    out = run_cli("pipeline/train.py", "--help")
    assert out.returncode == 0
    for name in PRESETS:
        assert name in out.stdout
    for key in all_keys():
        assert key in out.stdout


def test_unknown_key_and_unknown_preset_exit_non_zero():
    out = run_cli("pipeline/train.py", "--config", "smoke", "optim.bogus=1")
    assert out.returncode == 2 and "error: unknown config key 'optim.bogus'" in out.stderr
    out = run_cli("pipeline/train.py", "--config", "no-such-preset")
    assert out.returncode == 2 and "unknown preset or missing config file 'no-such-preset'" in out.stderr


def _data_args(cfg):
    return [
        f"data.shard_root={cfg.shard_root}",
        f"data.raw_dir={cfg.raw_dir}",
        f"data.n_meta={cfg.n_meta}",
        f"data.n_val={cfg.n_val}",
        "data.max_train=0",
        "data.max_test=0",
    ]


def _first_shard(shard_dir):
    import json

    m = json.loads((shard_dir / "manifest.json").read_text())
    return shard_dir / m["splits"]["train"]["shards"][1]["name"]


@pytest.mark.parametrize(
    "damage,message",
    [
        ("missing", "listed in the manifest but missing"),
        ("flip", "sha256 mismatch"),
        ("truncate", "bytes, the manifest says"),
    ],
)
def test_bad_shards_stop_the_run_before_training(fake_shards, fake_data_cfg, tmp_path, damage, message):
    path = _first_shard(fake_shards)
    if damage == "missing":
        path.unlink()
    elif damage == "flip":
        b = bytearray(path.read_bytes())
        b[1000] ^= 1
        path.write_bytes(bytes(b))
    else:
        with open(path, "r+b") as f:
            f.truncate(5000)
    out = run_cli(
        "pipeline/train.py", "--config", "smoke", *_data_args(fake_data_cfg), f"run.storage_path={tmp_path / 'runs'}"
    )
    assert out.returncode == 2, out.stderr
    assert f"error: {path}: {message}" in out.stderr or (f"{path}" in out.stderr and message in out.stderr)
    assert not (tmp_path / "runs").exists()  # nothing was started or written


def test_label_out_of_range_stops_the_run(fake_shards, fake_data_cfg, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline import shardset

    path = fake_shards / shardset.LABELS_FILE
    t = pq.read_table(path).to_pydict()
    t["label"][3] = 10
    pq.write_table(pa.table(t), path)
    out = run_cli(
        "pipeline/train.py",
        "--config",
        "smoke",
        *_data_args(fake_data_cfg),
        "data.verify=none",
        f"run.storage_path={tmp_path / 'runs'}",
    )
    assert out.returncode == 2
    key = pq.read_table(path)["key"][3].as_py()
    assert f"{path}: sample 3 (key {key}): label 10 is outside 0..9" in out.stderr


def test_relative_paths_in_a_ray_job_working_dir_resolve_against_mslc_home(tmp_path, monkeypatch):
    from pipeline.training.settings.cli import absolutize, in_ray_job_working_dir

    job_dir = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_abc"
    job_dir.mkdir(parents=True)
    monkeypatch.chdir(job_dir)
    monkeypatch.setenv("MSLC_HOME", str(tmp_path / "home"))
    assert in_ray_job_working_dir()
    cfg = absolutize(load_config("smoke", ["run.storage_path=runs", "data.shards=s3://b/x"]))
    assert cfg.run.storage_path == str(tmp_path / "home" / "runs")
    assert cfg.data.shard_root == str(tmp_path / "home" / "data" / "shards")
    assert cfg.data.shards == "s3://b/x"
    monkeypatch.chdir(tmp_path)
    assert not in_ray_job_working_dir()
    assert absolutize(load_config("smoke")).run.storage_path == str(tmp_path / "runs")


def test_fixed_beta_is_learned_unless_a_constant_is_given(tmp_path):
    assert load_config("smoke").mslc.fixed_beta is None
    assert load_config("smoke", ["mslc.fixed_beta=0.4"]).mslc.fixed_beta == 0.4
    assert load_config("smoke", ["mslc.fixed_beta=0.4", "mslc.fixed_beta=learned"]).mslc.fixed_beta is None
    f = tmp_path / "c.json"
    f.write_text('{"preset": "smoke", "mslc": {"fixed_beta": null}}')
    assert load_config(str(f)).mslc.fixed_beta is None
    for bad in ("-1", "1.5"):
        with pytest.raises(ConfigError, match="mslc.fixed_beta must be 'learned'"):
            load_config("smoke", [f"mslc.fixed_beta={bad}"])
    with pytest.raises(ConfigError, match="mslc.fixed_beta: cannot parse 'abc' as a number or 'learned'"):
        load_config("smoke", ["mslc.fixed_beta=abc"])


def test_run_export_auto_is_each_methods_own_rule():
    """run.export=auto (the default): MSLC exports the mean soft labels of its window, the methods
    whose table is the model's prediction the latest epoch's; an explicit value wins."""
    from pipeline.training.settings.methods import METHODS, export_mode

    assert load_config("fmnist-sym40").run.export == "auto"
    assert export_mode(load_config("smoke")) == "window"
    for name in ("glc", "mwnet", "bootstrap-soft", "joint-opt", "ce"):
        assert export_mode(load_config("smoke", [f"meta.method={name}"])) == "latest", name
    assert export_mode(load_config("smoke", ["run.export=latest"])) == "latest"
    assert export_mode(load_config("smoke", ["meta.method=glc", "run.export=window"])) == "window"
    assert {m.export for m in METHODS.values() if hasattr(m, "export")} <= {"latest", "window"}
    with pytest.raises(ConfigError, match="run.export must be one of"):
        load_config("smoke", ["run.export=best"])


def test_a_dead_ray_head_is_told_apart_from_a_live_one():
    """start_ray's guard: an address file naming a head nothing listens on is stale
    (ray.init() would retry it for minutes); a listening head and no file are not."""
    import socket

    from pipeline.training.run.launch import stale_ray_address

    with socket.socket() as live:
        live.bind(("127.0.0.1", 0))
        live.listen()
        host, port = live.getsockname()
        assert not stale_ray_address(f"{host}:{port}")
    assert stale_ray_address(f"{host}:{port}")  # closed now: refused at once
    assert not stale_ray_address(None)


@pytest.mark.parametrize(
    "value, workers, ray", [("4", 4, 4), ("1-8", "1-8", (1, 8)), ("2-2", 2, 2), (" 2 - 6 ", "2-6", (2, 6))]
)
def test_scale_workers_takes_n_or_an_elastic_range(value, workers, ray):
    cfg = load_config("smoke", [f"scale.workers={value}"])
    assert cfg.scale.workers == workers and cfg.scale.ray_num_workers() == ray
    assert cfg.scale.elastic == isinstance(ray, tuple)
    assert Config.from_dict(cfg.to_dict()).scale.workers == workers  # through Ray's dict and back


@pytest.mark.parametrize("value", ["0", "4-1", "0-2", "a-b", "1-2-3", "-2"])
def test_scale_workers_rejects_what_is_not_n_or_min_max(value):
    with pytest.raises(ConfigError, match="scale.workers"):
        load_config("smoke", [f"scale.workers={value}"])


def test_mid_epoch_checkpoint_keys_are_validated_and_the_sweep_turns_them_off():
    from tune.sweep import trial_config

    with pytest.raises(ConfigError, match="checkpoint_every"):
        load_config("smoke", ["run.checkpoint_every_steps=-1"])
    cfg = load_config("clothing1m", [])
    assert cfg.run.mid_epoch_checkpoints and not load_config("smoke", []).run.mid_epoch_checkpoints
    trial = trial_config(cfg.to_dict(), {}, "trial_x", "/tmp/runs")
    assert not trial.run.mid_epoch_checkpoints  # every Ray report is a Tune iteration


@pytest.mark.parametrize("name", ["..", ".", "a/b", "a\\b"])
def test_a_run_name_cannot_leave_the_storage_path(name):
    with pytest.raises(ConfigError, match="run.name"):
        apply_overrides(load_config("smoke", []), [f"run.name={name}"])


def test_each_method_owns_a_section_and_help_lists_it_under_the_method():
    from pipeline.training.settings import cli

    text = cli._key_table()
    assert "  gce.* (read by meta.method=gce):\n  gce.q = 0.7\n" in text
    assert "  bootstrap.* (read by meta.method=bootstrap-soft|bootstrap-hard):\n" in text
    assert "  mslc.* (read by meta.method=mslc):\n  mslc.corrector = class\n" in text
    cfg = load_config("smoke", ["meta.method=gce", "gce.q=0.5"])
    assert cfg.gce.q == 0.5 and not hasattr(cfg.meta, "gce_q")
    with pytest.raises(ConfigError, match=r"gce.q must be in \(0, 1\]"):
        load_config("smoke", ["gce.q=0"])


@pytest.mark.parametrize(
    "old, new",
    [
        ("meta.gce_q=0.5", "gce.q"),
        ("meta.corrector=class", "mslc.corrector"),
        ("meta.alpha_lr=1e-3", r"mslc.alpha_lr \(MW-Net's weight net: mwnet.lr\)"),
        ("meta.finetune_epochs=2", "finetune.epochs"),
    ],
)
def test_a_key_from_before_the_method_sections_names_its_new_place(old, new):
    with pytest.raises(ConfigError, match=rf"config key {old.split('=')[0]} is now {new}"):
        load_config("smoke", [old])
    section, key = old.split("=")[0].split(".")
    with pytest.raises(ConfigError, match=rf"config key {section}.{key} is now {new}"):
        Config.from_dict({**load_config("smoke").to_dict(), section: {key: 1}})


def test_the_config_parses_and_help_prints_without_torch():
    """``--help``, presets and validation need no torch (nor do pipeline/prepare.py and train.py's parsing)."""
    code = (
        "import sys\nfrom pipeline.training.settings.cli import _key_table, load_config\n"
        "import pipeline.prepare\nimport pipeline.train\n"
        "load_config('fmnist-sym40', ['meta.method=mwnet', 'mwnet.lr=0.01'])\n_key_table()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0, r.stderr


def test_every_method_section_is_a_config_section_and_every_declared_section_has_its_settings():
    import dataclasses

    from pipeline.training.settings.methods import METHODS, SECTIONS

    fields = {f.name: f.type for f in dataclasses.fields(Config)}
    for name, cls in SECTIONS.items():
        assert name in fields and isinstance(getattr(Config(), name), cls), name
    assert {m.section for m in METHODS.values() if m.section} <= set(SECTIONS)
