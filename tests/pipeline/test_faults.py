"""Faults that must not pass silently (issue 26): a full disk, a checkpoint of another run,
a manifest that does not add up, a report over other shards, SIGTERM, two writers. Each
case asserts the exit status (or the error), the one line naming the file, key or field,
and that nothing written before was lost or replaced.

Full disks are real: a small tmpfs mounted for the test (CI runs as root here)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from pipeline import shardset
from pipeline.errors import CheckpointError, DiskFullError, ShardError
from pipeline.prep import job as prep
from pipeline.rundir import RunDir
from pipeline.storage import atomic_torch_save, atomic_write_text
from pipeline.training.data import streaming
from pipeline.training.run import checkpoint
from pipeline.training.run.checkpoint import LocalReporter
from pipeline.training.settings.cli import absolutize, load_config
from pipeline.worker import run
from tests.conftest import ROOT, fake_images, ray_env


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    """A tmpfs of ``size`` (``"600k"``) mounted at ``path`` for the block."""
    if os.geteuid() != 0:
        pytest.fail("the disk-full tests mount a small tmpfs and need root (as CI runs here)")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _smoke(data_cfg, storage, name, *extra):
    return absolutize(
        load_config(
            "smoke",
            [
                f"data.shard_root={data_cfg.shard_root}",
                f"data.n_meta={data_cfg.n_meta}",
                f"data.n_val={data_cfg.n_val}",
                "data.max_train=0",
                "data.max_test=0",
                "optim.epochs=2",
                "meta.warmup_epochs=1",
                "optim.milestones=[3]",
                f"run.storage_path={storage}",
                f"run.name={name}",
                "run.tensorboard=false",
                "run.report=false",
                *extra,
            ],
        )
    )


def _train(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "pipeline/train.py", "--config", "smoke", *args],
        cwd=ROOT,
        env=ray_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _fmnist_smoke_shards(tmp_path) -> list[str]:
    base = [f"data.shard_root={tmp_path / 'shards'}", "run.tensorboard=false", "run.report=false"]
    subprocess.run(
        [sys.executable, "pipeline/prepare.py", "--config", "smoke", *base],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    return base


# --- a full disk -----------------------------------------------------------------------------


def test_a_full_disk_keeps_the_old_file_and_names_the_new_one(tmp_path):
    with small_disk(tmp_path / "disk", "256k") as disk:
        old = {"w": torch.arange(10.0)}
        atomic_torch_save(old, disk / "model.pt")
        atomic_write_text(disk / "metrics.json", '{"ok": 1}')
        with pytest.raises(
            DiskFullError,
            match=rf"{disk / 'model.pt'}: no space left on device \(it needs more "
            r"than [\d,]+ bytes, [\d,]+ bytes are free there\)",
        ):
            atomic_torch_save({"w": torch.zeros(200_000)}, disk / "model.pt")
        with pytest.raises(DiskFullError, match=rf"{disk / 'metrics.json'}: no space left on device"):
            atomic_write_text(disk / "metrics.json", "x" * 400_000)
        assert torch.equal(torch.load(disk / "model.pt")["w"], old["w"])  # the old file, whole
        assert (disk / "metrics.json").read_text() == '{"ok": 1}'
        assert sorted(p.name for p in disk.iterdir()) == ["metrics.json", "model.pt"]  # no temp file left


def test_a_disk_that_fills_during_training_ends_with_one_line_and_whole_checkpoints(tmp_path):
    """Ray's copy of the first epoch's checkpoint fills the disk: exit 2, the line names that
    checkpoint, and no file is left truncated under a checkpoint's name."""
    base = _fmnist_smoke_shards(tmp_path)
    with small_disk(tmp_path / "disk", "2600k") as disk:
        out = _train(*base, f"run.storage_path={disk}", "run.name=full")
        assert out.returncode == 2, out.stderr[-3000:]
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: {disk / 'full'}/checkpoint_") and "/state.pt: no space left on device" in last
        states = list((disk / "full").rglob("state.pt"))
        for p in states:  # whatever is there under a checkpoint's name loads
            checkpoint.load_state(p.parent)
        assert not [p for p in (disk / "full").rglob("*") if ".tmp-" in p.name]
        assert not (disk / "full" / "model.pt").exists()


def test_prepare_on_a_full_disk_is_one_line_and_resumable(tmp_path):
    with small_disk(tmp_path / "disk", "300k") as disk:
        cmd = [sys.executable, "pipeline/prepare.py", "--config", "smoke", f"data.shard_root={disk}"]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert out.returncode == 2, out.stderr[-2000:]
        line = out.stderr.strip().splitlines()[-1]
        assert (
            line.startswith(f"error: {disk}/") and "no space left on device" in line and "Traceback" not in out.stderr
        )
        partial = [p for p in disk.iterdir() if p.name.endswith(".partial")]
        assert partial and not list(partial[0].glob(".*.tmp-*"))  # whole shards only, resumable
        for rec in partial[0].glob("*.json"):
            if rec.name.startswith(("train-", "meta-", "val-", "test-")):
                r = json.loads(rec.read_text())
                assert (partial[0] / r["name"]).stat().st_size == r["bytes"]


# --- checkpoints of another run, storage that is not a directory -----------------------------


def _save_foreign(tmp_path, fake_shards, fake_data_cfg) -> Path:
    """A real checkpoint of a run on other data (more training samples)."""
    other = dataclasses.replace(fake_data_cfg, shard_root=str(tmp_path / "other"))
    prep.ensure_shards(other, raw=fake_images(n_train=800), log=lambda s: None)
    cfg = _smoke(other, tmp_path / "runs", "other")
    run(cfg, LocalReporter(tmp_path / "runs" / "other"), log=lambda s: None)
    return tmp_path / "runs" / "other" / "checkpoints" / "epoch_0002"


def test_resuming_from_a_checkpoint_of_other_data_names_what_differs(fake_shards, fake_data_cfg, tmp_path):
    ckpt = _save_foreign(tmp_path, fake_shards, fake_data_cfg)
    cfg = _smoke(fake_data_cfg, tmp_path / "runs", "mine")
    with pytest.raises(
        CheckpointError,
        match=rf"run.resume_from={ckpt}: cannot resume this run from it: its label "
        r"bank has shape \(700, 10\), this run's data \(500 training samples, "
        r"10 classes\) needs \(500, 10\)",
    ):
        run(cfg, LocalReporter(tmp_path / "runs" / "mine", resume_from=ckpt), log=lambda s: None)
    assert not (RunDir(tmp_path / "runs" / "mine").model).exists()


@pytest.mark.parametrize("case", ["other data", "other model", "unsafe", "truncated", "missing", "storage is a file"])
def test_the_driver_checks_the_resume_checkpoint_and_storage_before_ray_starts(
    fake_shards, fake_data_cfg, tmp_path, case
):
    ckpt = _save_foreign(tmp_path, fake_shards, fake_data_cfg)
    target = tmp_path / "ckpt"
    target.mkdir()
    state = checkpoint.load_state(ckpt)
    extra, want = [], None
    if case == "other data":
        checkpoint.save_state(state, target)
        want = r"its label bank has shape \(700, 10\), this run's data \(500 training samples"
    elif case == "other model":
        state["model"] = {"fc.weight": torch.zeros(10, 3)}
        checkpoint.save_state(state, target)
        want = r"its model is another architecture"
    elif case == "unsafe":
        torch.save(
            {"model": {}, "bank": {}, "epoch": 1, "history": [], "x": argparse.Namespace(a=1)}, target / "state.pt"
        )
        want = r"it holds objects other than tensors and plain containers, which are not loaded"
    elif case == "truncated":
        checkpoint.save_state(state, target)
        raw = (target / "state.pt").read_bytes()
        (target / "state.pt").write_bytes(raw[: len(raw) // 2])
        want = r"cannot be read: .*truncated \(a disk that filled\?\) or not a checkpoint"
    elif case == "missing":
        target = tmp_path / "nowhere"
        want = r"no checkpoint there \(no such directory\)"
    else:
        (tmp_path / "afile").write_text("x")
        extra = [f"run.storage_path={tmp_path / 'afile' / 'runs'}"]
        want = rf"run.storage_path={tmp_path / 'afile' / 'runs'}: {tmp_path / 'afile'} is a file, not a directory"
    t0 = time.time()
    out = _train(
        f"data.shard_root={fake_data_cfg.shard_root}",
        f"data.n_meta={fake_data_cfg.n_meta}",
        f"data.n_val={fake_data_cfg.n_val}",
        "data.max_train=0",
        "data.max_test=0",
        f"run.storage_path={tmp_path / 'runs'}",
        "run.name=mine",
        *extra,
        *([] if case == "storage is a file" else [f"run.resume_from={target}"]),
    )
    assert out.returncode == 2, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and re.search(want, last), last
    assert "Traceback" not in out.stderr and "TrainController" not in out.stderr  # before Ray started
    assert time.time() - t0 < 60


def test_a_run_name_that_links_out_of_the_storage_path_is_refused(tmp_path):
    from pipeline.errors import ConfigError
    from pipeline.training.run.launch import name_run

    (tmp_path / "runs").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "runs" / "out").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "runs" / "inside").symlink_to(tmp_path / "runs" / "real", target_is_directory=True)
    cfg = load_config("smoke", [f"run.storage_path={tmp_path / 'runs'}", "run.name=out"])
    with pytest.raises(
        ConfigError,
        match=rf"run.name='out': {tmp_path / 'runs' / 'out'} is a link to "
        rf"{tmp_path / 'elsewhere'}, outside run.storage_path",
    ):
        name_run(cfg)
    assert (
        name_run(load_config("smoke", [f"run.storage_path={tmp_path / 'runs'}", "run.name=inside"])).run.name
        == "inside"
    )
    assert not any((tmp_path / "elsewhere").iterdir())


# --- the manifest and the shards -------------------------------------------------------------


@pytest.mark.parametrize(
    "edit, want",
    [
        (lambda m: m["splits"]["meta"].update(count=-3), r"split 'meta' has count -3; it must be an integer >= 0"),
        (
            lambda m: m["splits"]["train"]["shards"][0].update(count=-1),
            r"split 'train', shard train-00000.tar: count -1",
        ),
        (
            lambda m: m["splits"]["train"].update(count=m["splits"]["train"]["count"] + 7),
            r"split 'train' counts 507 samples but its shards' counts add up to 500",
        ),
        (lambda m: m.update(num_classes=1), r"num_classes is 1; it must be an integer >= 2"),
    ],
)
def test_a_manifest_that_does_not_add_up_is_named_when_read(fake_shards, edit, want):
    path = fake_shards / "manifest.json"
    m = json.loads(path.read_text())
    edit(m)
    path.write_text(json.dumps(m))
    with pytest.raises(ShardError, match=rf"{path}: {want}"):
        shardset.load_manifest(fake_shards)


def test_a_manifest_that_does_not_add_up_stops_train_py_before_ray(fake_shards, fake_data_cfg, tmp_path):
    path = fake_shards / "manifest.json"
    m = json.loads(path.read_text())
    m["splits"]["val"]["count"] = -2
    path.write_text(json.dumps(m))
    out = _train(
        f"data.shard_root={fake_data_cfg.shard_root}",
        f"data.n_meta={fake_data_cfg.n_meta}",
        f"data.n_val={fake_data_cfg.n_val}",
        "data.max_train=0",
        "data.max_test=0",
        f"run.storage_path={tmp_path / 'runs'}",
        "run.name=m",
    )
    assert out.returncode == 2 and "TrainController" not in out.stderr, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1] == (
        f"error: {path}: split 'val' has count -2; it must be an integer >= 0"
    )
    assert not (tmp_path / "runs" / "m").exists() or not any((tmp_path / "runs" / "m").iterdir())


def test_an_empty_shard_is_named_even_without_verification(fake_shards):
    m = shardset.load_manifest(fake_shards)
    victim = fake_shards / m["splits"]["meta"]["shards"][0]["name"]
    victim.write_bytes(b"")
    with pytest.raises(
        ShardError, match=rf"shard {victim}: truncated or corrupt tar \(the file is empty \(0 bytes\)\)"
    ):
        streaming.load_split_tensors(fake_shards, m, "meta")


def test_the_report_refuses_shards_of_other_data_and_keeps_the_good_report(fake_shards, fake_data_cfg, tmp_path):
    cfg = _smoke(fake_data_cfg, tmp_path / "runs", "r", "run.report=true")
    run(cfg, LocalReporter(tmp_path / "runs" / "r"), log=lambda s: None)
    run_dir = tmp_path / "runs" / "r"
    before = (RunDir(run_dir).report).read_bytes()
    other = dataclasses.replace(fake_data_cfg, shard_root=str(tmp_path / "other"), split_seed=5)
    other_dir = prep.ensure_shards(other, raw=fake_images(seed=3), log=lambda s: None)  # same row count
    out = subprocess.run(
        [sys.executable, "pipeline/report.py", str(run_dir), "--shards", other_dir],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {RunDir(run_dir).labels}: sample ") and "the run used other shards" in last
    assert (RunDir(run_dir).report).read_bytes() == before


# --- signals and a second writer -------------------------------------------------------------


def test_sigterm_stops_a_run_with_one_line_and_keeps_its_checkpoints(tmp_path):
    base = _fmnist_smoke_shards(tmp_path)
    proc = subprocess.Popen(
        [
            sys.executable,
            "pipeline/train.py",
            "--config",
            "smoke",
            *base,
            "optim.epochs=40",
            f"run.storage_path={tmp_path / 'runs'}",
            "run.name=t",
        ],
        cwd=ROOT,
        env=ray_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    for line in proc.stdout:  # wait for the second epoch's line: a checkpoint is whole by then
        seen.append(line)
        if "epoch   2/40" in line:
            break
    proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("terminated (SIGTERM; its checkpoints are kept: go on with run.resume_from="), last
    ckpt = Path(last.split("run.resume_from=")[1].split(" ")[0])
    assert checkpoint.load_state(ckpt)["epoch"] >= 1
    assert "SIGTERM received" not in err and not (RunDir(tmp_path / "runs" / "t").model).exists()


def test_a_second_writer_of_the_same_shards_waits_and_then_finds_them(fake_data_cfg):
    out = Path(fake_data_cfg.shard_dir())
    out.parent.mkdir(parents=True, exist_ok=True)
    import fcntl

    lines = []
    with open(out.parent / f".{out.name}.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another writer holds it
        held.write("4242")
        held.flush()
        t = threading.Thread(
            target=lambda: lines.append(prep.ensure_shards(fake_data_cfg, raw=fake_images(), log=lines.append))
        )
        t.start()
        time.sleep(1.0)
        assert t.is_alive() and any("another process (pid 4242) is writing these shards; waiting" in s for s in lines)
        assert not out.exists()
        fcntl.flock(held, fcntl.LOCK_UN)
    t.join(timeout=120)
    shardset.verify(out, shardset.load_manifest(out), level="full")
    assert not (out.parent / f".{out.name}.lock").exists()


def test_sigterm_stops_a_parallel_prepare_with_one_line_and_a_rerun_resumes(tmp_path):
    cmd = [
        sys.executable,
        "pipeline/prepare.py",
        "--config",
        "fmnist-sym40",
        f"data.shard_root={tmp_path}",
        "data.prepare_workers=2",
        "data.shard_size=2000",
        "data.max_train=20000",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if "shards:" in line:  # the pool is writing
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)  # to the driver alone, as Kubernetes does
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("prepare finished before the signal")
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "terminated (SIGTERM; what was complete is kept: rerun the same command to resume)"
    )
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    out = Path(again.stdout.strip().splitlines()[-1])
    shardset.verify(out, shardset.load_manifest(out), level="full")


# --- pretrained weights without internet -----------------------------------------------------


def test_weights_from_a_file_or_a_url_are_fetched_once_per_node_and_checked(tmp_path, monkeypatch):
    import fsspec

    from mslc.models import SmallCNN
    from pipeline.errors import ConfigError
    from pipeline.weights import cached_path, fetch, load_into

    monkeypatch.setenv("MSLC_WEIGHTS_CACHE", str(tmp_path / "cache"))
    src = SmallCNN(10, 1)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    model = SmallCNN(10, 1)
    load_into(model, str(tmp_path / "w.pt"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), src.state_dict().values()))
    with fsspec.open("memory://bucket/w.pt", "wb") as f:  # an object store, in memory
        f.write((tmp_path / "w.pt").read_bytes())
    first = fetch("memory://bucket/w.pt")
    assert first == cached_path("memory://bucket/w.pt") and first.read_bytes() == (tmp_path / "w.pt").read_bytes()
    fsspec.filesystem("memory").rm("bucket/w.pt")
    assert fetch("memory://bucket/w.pt") == first  # the node's copy: not fetched again
    with pytest.raises(ConfigError, match=r"model.weights=.*other.pt: no such file \(on this node\)"):
        fetch(str(tmp_path / "other.pt"))
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match=r"model.weights=.*bad.pt: does not fit model.arch"):
        load_into(SmallCNN(10, 1), str(tmp_path / "bad.pt"))


def test_weights_that_cannot_be_had_stop_the_run_before_ray_starts(fake_shards, fake_data_cfg, tmp_path, monkeypatch):
    url = "http://127.0.0.1:9/resnet50.pth"  # nothing listens there: as a node without internet
    out = subprocess.run(
        [
            sys.executable,
            "pipeline/train.py",
            "--config",
            "smoke",
            f"data.shard_root={fake_data_cfg.shard_root}",
            f"data.n_meta={fake_data_cfg.n_meta}",
            f"data.n_val={fake_data_cfg.n_val}",
            "data.max_train=0",
            "data.max_test=0",
            f"run.storage_path={tmp_path / 'runs'}",
            "model.pretrained=true",
            f"model.weights={url}",
        ],
        cwd=ROOT,
        env={**ray_env(), "MSLC_WEIGHTS_CACHE": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: model.weights={url}: cannot be downloaded on this node (URLError")
    assert "Traceback" not in out.stderr and "TrainController" not in out.stderr
    assert not list((tmp_path / "cache").glob("*.pth"))
