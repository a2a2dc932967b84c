"""Bad input, hostile but ordinary: each case fails with a clear message naming the culprit,
the documented exit status, and nothing already written changed (issue 12)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import shardset
from pipeline.errors import DivergedError, ShardError
from pipeline.prep import job as prep
from pipeline.prep.fashion_mnist import fmnist_files
from pipeline.rundir import RunDir
from pipeline.training.data import streaming
from pipeline.training.methods.state import TrainState
from pipeline.training.run.checkpoint import LocalReporter
from pipeline.training.settings.cli import absolutize, load_config
from pipeline.training.settings.config import DataConfig
from pipeline.worker import run
from tests import fakes
from tests.conftest import ROOT, ray_env


def _snapshot(d: Path) -> dict[str, int]:
    return {str(p.relative_to(d)): p.stat().st_mtime_ns for p in sorted(d.rglob("*")) if p.is_file()}


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
                "optim.epochs=3",
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


@pytest.mark.parametrize("method", ["mslc", "ce", "mwnet"])
def test_a_diverging_run_stops_and_exports_nothing(fake_shards, fake_data_cfg, tmp_path, method):
    cfg = _smoke(fake_data_cfg, tmp_path, "diverge", "optim.lr=1e6", f"meta.method={method}")
    with pytest.raises(
        DivergedError,
        match=r"training diverged in epoch 1 \(by step \d+\): non-finite .*"
        r"Nothing was exported; no checkpoint was written",
    ):
        run(cfg, LocalReporter(tmp_path / "diverge"), log=lambda s: None)
    written = {p.name for p in (tmp_path / "diverge").rglob("*")}
    assert not written & {"model.pt", "corrected_labels.parquet", "metrics.json"}
    assert not any(n.startswith("epoch_") for n in written)


def test_divergence_after_good_epochs_keeps_their_checkpoint(fake_shards, fake_data_cfg, tmp_path, monkeypatch):
    good = _smoke(fake_data_cfg, tmp_path, "late", "optim.epochs=2")
    run(good, LocalReporter(tmp_path / "late"), log=lambda s: None)
    before = _snapshot(tmp_path / "late" / "checkpoints")
    ckpt = tmp_path / "late" / "checkpoints" / "epoch_0002"
    load = TrainState.load_state_dict

    def load_then_blow_up(self, s):  # the resumed run's lr jumps (a checkpoint restores the saved lr)
        load(self, s)
        for g in self.opt_w.param_groups:
            g["lr"] = 1e6

    monkeypatch.setattr(TrainState, "load_state_dict", load_then_blow_up)
    bad = _smoke(fake_data_cfg, tmp_path, "late")
    with pytest.raises(DivergedError, match="in epoch 3 .*the last good checkpoint is epoch 2"):
        run(bad, LocalReporter(tmp_path / "late", resume_from=ckpt), log=lambda s: None)
    assert _snapshot(tmp_path / "late" / "checkpoints") == before


@pytest.mark.parametrize(
    "name",
    [
        "../other/train-00000.tar",
        "/etc/passwd",
        "pipe:cat /etc/passwd",
        "train-00000.tar/../../x.tar",
        "sub/train-00000.tar",
    ],
)
def test_shard_names_must_stay_inside_the_shard_directory(fake_shards, name):
    path = fake_shards / "manifest.json"
    m = json.loads(path.read_text())
    m["splits"]["train"]["shards"][0]["name"] = name
    path.write_text(json.dumps(m))
    with pytest.raises(ShardError, match=f"{path}: split 'train' names the shard {name!r}"):
        shardset.load_manifest(fake_shards)


def test_label_table_name_must_be_the_standard_one(fake_shards):
    path = fake_shards / "manifest.json"
    m = json.loads(path.read_text())
    m["labels"]["name"] = "../labels.parquet"
    path.write_text(json.dumps(m))
    with pytest.raises(ShardError, match="the label table is named '../labels.parquet'"):
        shardset.load_manifest(fake_shards)


@pytest.mark.parametrize("dirname", ["shards#1", "my shards", "s{1,2}", "a?b"])
def test_legal_path_characters_in_the_shard_directory_work(fake_shards, tmp_path, dirname):
    moved = tmp_path / dirname
    shutil.copytree(fake_shards, moved)
    m = shardset.load_manifest(moved)
    shardset.verify(moved, m, level="full")
    got = sorted(
        i
        for _, _, i in streaming.stream(
            shardset.shard_urls(moved, m, "train"),
            num_classes=10,
            shuffle_seed=None,
            expected=shardset.expected_counts(moved, m, "train"),
        )
    )
    assert got == list(range(m["splits"]["train"]["count"]))


def test_a_missing_shard_is_named(fake_shards):
    m = shardset.load_manifest(fake_shards)
    urls = shardset.shard_urls(fake_shards, m, "train")
    os.remove(urls[1])
    with pytest.raises(ShardError, match=f"shard {urls[1]}: cannot open"):
        list(streaming.stream(urls, num_classes=10, shuffle_seed=None))


def _relabel_in_shard(shard_dir: Path, shard: int, *, keep_manifest_true: bool = True) -> tuple[Path, str, int]:
    """Change the first sample's ``label.cls`` in train shard ``shard`` (the table unchanged)
    and record the new tar's size and sha256 in the manifest, as an edit would. Returns the
    shard, the sample's key and its new label."""
    import hashlib
    import io
    import tarfile

    mpath = shard_dir / "manifest.json"
    m = json.loads(mpath.read_text())
    rec = m["splits"]["train"]["shards"][shard]
    path = shard_dir / rec["name"]
    with tarfile.open(path) as tar:
        members = [(i, tar.extractfile(i).read()) for i in tar.getmembers()]
    key, new = None, None
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as out:
        for info, data in members:
            if key is None and info.name.endswith(".label.cls"):
                key = info.name.split(".")[0]
                new = (int(data) + 1) % 10
                data = str(new).encode()
                info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    rec["bytes"], rec["sha256"] = path.stat().st_size, hashlib.sha256(buf.getvalue()).hexdigest()
    mpath.write_text(json.dumps(m))
    return path, key, new


@pytest.mark.parametrize("bad_samples", ["error", "skip"])
def test_a_shard_that_disagrees_with_the_label_table_is_named_not_trained_on(
    fake_shards, fake_data_cfg, tmp_path, bad_samples
):
    """Issue 26: the label table is the one source of given labels; a shard whose ``.cls``
    disagrees (its checksum updated) stops the run naming the shard and key, even under
    ``data.bad_samples=skip``, before anything is exported."""
    shard, key, new = _relabel_in_shard(fake_shards, 1)
    table = shardset.read_labels_table(fake_shards, shardset.load_manifest(fake_shards))
    shardset.verify(fake_shards, shardset.load_manifest(fake_shards), level="full")  # checksums agree
    cfg = _smoke(fake_data_cfg, tmp_path, "mismatch", f"data.bad_samples={bad_samples}")
    with pytest.raises(
        ShardError,
        match=rf"shard {shard}, sample {key}: label {new} in the shard, "
        rf"{table['label'][int(key)]} in train-labels.parquet: the shards and the "
        "label table disagree",
    ):
        run(cfg, LocalReporter(tmp_path / "mismatch"), log=lambda s: None)
    assert not (RunDir(tmp_path / "mismatch").model).exists()
    assert not (RunDir(tmp_path / "mismatch").labels).exists()


@pytest.mark.parametrize("index", [300, -5])
def test_label_listing_rows_outside_the_raw_training_set_are_errors(tmp_path, index):
    archive, a = fakes.make_cifar_archive(tmp_path / "raw")
    table = tmp_path / "human.parquet"
    pq.write_table(pa.table({"index": np.array([0, 1, index]), "label": np.array([1, 2, 3])}), table)
    cfg = dict(dataset="cifar10", raw_dir=str(archive), n_meta=20, n_val=20, noise="none", labels_file=str(table))
    out = tmp_path / "out"
    with pytest.raises(
        prep.PipelineError, match=f"human.parquet.*{index}.*no sample of the raw training set has this index"
    ):
        prep.prepare(DataConfig(**cfg), out, log=lambda s: None)
    assert not out.exists() and not prep.partial_dir(out).exists()  # nothing left behind
    done = prep.prepare(DataConfig(**cfg, skip_bad=True), out, log=lambda s: None)
    m = shardset.load_manifest(done)
    assert m["bad"]["by_reason"] == {"not_in_training_set": 1} and m["labels_file"]["rows"] == 2


@pytest.mark.parametrize(
    "text, culprit",
    [
        ('{"optim": {"epochs": "abc"}}', "config key optim.epochs: expected int, got 'abc'"),
        ("[1, 2]", "the top level must be a JSON object"),
        ('{"optim": 5}', "config section optim must be a mapping"),
        ('{"mslc": {"fixed_beta": "half"}}', "config key mslc.fixed_beta: expected a number or null"),
        ('{"optim": {"milestones": [1, "x"]}}', "config key optim.milestones: expected a list of integers"),
        ('{"run": {"tensorboard": "yes"}}', "config key run.tensorboard: expected bool"),
    ],
)
def test_json_config_type_errors_are_one_line(tmp_path, text, culprit):
    path = tmp_path / "c.json"
    path.write_text(text)
    out = subprocess.run(
        [sys.executable, "pipeline/train.py", "--config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert lines[0].startswith(f"error: config file {path}: ") and culprit in lines[0]


def _first_shard_written(tmp_path: Path, proc, limit: float = 60.0) -> None:
    """Wait until the writer has put a shard into its partial directory (or the process ended)."""
    end = time.time() + limit
    while time.time() < end and proc.poll() is None and not list(tmp_path.glob(".*partial*/*.tar")):
        time.sleep(0.05)


@pytest.mark.parametrize("after", [0.5, "a shard"])
def test_ctrl_c_during_a_parallel_prepare_exits_130_and_a_rerun_resumes(tmp_path, after):
    if fmnist_files(ROOT / "data" / "raw") is None:
        pytest.fail("Fashion-MNIST is missing: run `make data` (the Makefile's test target does)")
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
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    if after == "a shard":  # mid-write, however fast this machine prepares (a fixed delay can land after the end)
        _first_shard_written(tmp_path, proc)
    else:
        time.sleep(after)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    t0 = time.time()
    _, err = proc.communicate(timeout=60)
    assert time.time() - t0 < 15
    if proc.returncode == 0:
        pytest.skip(f"prepare finished within {after} s")
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted")
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    out = Path(again.stdout.strip().splitlines()[-1])
    m = shardset.load_manifest(out)
    shardset.verify(out, m, level="full")
    assert not list(out.glob(".*tmp*")) and not list(tmp_path.glob(".*partial*"))


def test_a_bad_shard_met_while_streaming_ends_the_ray_run_with_one_error_line(tmp_path):
    if fmnist_files(ROOT / "data" / "raw") is None:
        pytest.fail("Fashion-MNIST is missing: run `make data` (the Makefile's test target does)")
    base = [
        f"data.shard_root={tmp_path / 'shards'}",
        f"run.storage_path={tmp_path / 'runs'}",
        "run.tensorboard=false",
        "run.report=false",
    ]
    shard_dir = Path(
        subprocess.run(
            [sys.executable, "pipeline/prepare.py", "--config", "smoke", *base],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    # the shard's labels edited, its size and sha256 in the manifest too (data.verify passes): only the
    # label table can tell (a truncated shard takes the same path: tests/pipeline/shardset/test_tarstream.py, tests/pipeline/prep/test_bad_data.py)
    victim, key, new = _relabel_in_shard(shard_dir, 1)
    table = shardset.read_labels_table(shard_dir, shardset.load_manifest(shard_dir))["label"]
    out = subprocess.run(
        [sys.executable, "pipeline/train.py", "--config", "smoke", *base, "run.name=bad-shard"],
        cwd=ROOT,
        env=ray_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 2, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"error: shard {victim}, sample {key}: label {new} in the shard, {table[int(key)]} in "
        "train-labels.parquet: the shards and the label table disagree"
    ), last
    assert not (RunDir(tmp_path / "runs" / "bad-shard").model).exists()


def test_the_driver_finds_a_workers_pipeline_error_behind_ray_train_wrappers():
    from ray.train import ControllerError
    from ray.train.v2.api.exceptions import WorkerGroupError

    from pipeline.train import first_line, known_error

    diverged = DivergedError("training diverged in epoch 2 (by step 40): non-finite training loss at step 33")
    wrapped = WorkerGroupError("rank 1 failed", {1: RuntimeError("other"), 0: diverged})
    assert known_error(wrapped) is diverged
    try:
        raise ControllerError(RuntimeError("x")) from ShardError("shard s.tar: truncated or corrupt tar (x)\ntrace")
    except ControllerError as e:
        assert first_line(known_error(e)) == "shard s.tar: truncated or corrupt tar (x)"
    assert known_error(WorkerGroupError("oom", {0: MemoryError()})) is None
