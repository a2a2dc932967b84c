"""Every kind of bad input: prepare names it (file, line, key) and stops, or with
--skip-bad leaves it out and counts it; streaming never leaves ranks waiting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import shardset
from pipeline.errors import PipelineError, ShardError
from pipeline.prep import job as prep
from pipeline.training.data import streaming
from tests import fakes
from tests.conftest import ROOT
from tests.fakes import c1m_cfg, quiet


def corrupt_jpeg(c1m):
    k = c1m.noisy_train[3]
    data = (c1m.root / k).read_bytes()
    (c1m.root / k).write_bytes(data[: len(data) // 3])
    return k, "corrupt_image", f"{c1m.root / k}: corrupt image"


def missing_image(c1m):
    k = c1m.noisy_train[4]
    (c1m.root / k).unlink()
    return k, "missing_image", f"{c1m.root / k}: image file missing"


def two_labels(c1m):
    k = c1m.noisy_train[5]
    other = (c1m.noisy_label[k] + 1) % 14
    fakes.append_line(c1m.root / "noisy_label_kv.txt", f"{k} {other}")
    return (
        k,
        "conflicting_labels",
        f"noisy_label_kv.txt:\\d+: {k}: labelled {c1m.noisy_label[k]} on line \\d+ and {other}",
    )


def out_of_range(c1m):
    k = c1m.noisy_train[6]
    text = (c1m.root / "noisy_label_kv.txt").read_text().replace(f"{k} {c1m.noisy_label[k]}", f"{k} 14")
    (c1m.root / "noisy_label_kv.txt").write_bytes(text.encode())
    return k, "label_out_of_range", f"noisy_label_kv.txt:\\d+: {k}: label 14 is outside 0..13"


def bad_line(c1m):
    fakes.append_line(c1m.root / "clean_label_kv.txt", "images/x.jpg 3 extra")
    return None, "unparsable_line", "clean_label_kv.txt:\\d+: images/x.jpg: expected 'KEY LABEL'"


CASES = [corrupt_jpeg, missing_image, two_labels, out_of_range, bad_line]


@pytest.mark.parametrize("case", CASES, ids=lambda f: f.__name__)
def test_bad_input_stops_with_its_file_and_key_and_writes_nothing(c1m, tmp_path, case):
    _, _, message = case(c1m)
    with pytest.raises(PipelineError, match=message):
        prep.prepare(c1m_cfg(c1m.root), tmp_path / "out", log=quiet)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", CASES, ids=lambda f: f.__name__)
def test_skip_bad_leaves_it_out_and_counts_it(c1m, tmp_path, case):
    key, reason, _ = case(c1m)
    out = prep.prepare(c1m_cfg(c1m.root, skip_bad=True), tmp_path / "out", log=quiet)
    m = shardset.load_manifest(out)
    assert m["bad"]["skipped"] == 1 and m["bad"]["by_reason"] == {reason: 1}
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert len(skipped) == 1
    keys = shardset.read_labels_table(out, m)["key"].tolist()
    if key is not None:
        assert key not in keys and len(keys) == 279
    shardset.verify(out, m, level="full")


def test_prepare_command_line_exit_codes(c1m, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(*args):
        return subprocess.run(
            [sys.executable, "pipeline/prepare.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    common = ["clothing1m", "--raw", str(c1m.root), "--n-meta", "14", "--shard-size", "100"]
    ok = run(*common, "--out", str(tmp_path / "good"))
    assert ok.returncode == 0, ok.stderr
    assert "wrote 280 train / 14 meta / 28 val / 28 test samples" in ok.stdout
    k, _, _ = missing_image(c1m)
    bad = run(*common, "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and f"{c1m.root / k}: image file missing" in bad.stderr
    assert "--skip-bad" in bad.stderr and not (tmp_path / "bad").exists()
    skip = run(*common, "--out", str(tmp_path / "bad"), "--skip-bad")
    assert skip.returncode == 0 and "1 bad input(s) skipped" in skip.stdout
    assert run("clothing1m", "--raw", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")).returncode == 2


# ------------------------------------------------------------------ while streaming


def _poison(out: Path, m: dict, index: int) -> None:
    """Replace training sample ``index``'s image with bytes that do not decode (the tar stays valid)."""
    import io
    import tarfile

    for rec in m["splits"]["train"]["shards"]:
        path = out / rec["name"]
        with tarfile.open(path) as tar:
            items = [(mem, tar.extractfile(mem).read()) for mem in tar]
        if not any(mem.name.startswith(f"{index:08d}.") for mem, _ in items):
            continue
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for mem, data in items:
                if mem.name == f"{index:08d}.jpg":
                    data = b"\xff\xd8 not a jpeg"
                mem.size = len(data)
                tar.addfile(mem, io.BytesIO(data))


def test_a_bad_sample_while_streaming_errors_or_is_skipped(c1m, tmp_path, capfd):
    out = prep.prepare(c1m_cfg(c1m.root), tmp_path / "out", log=quiet)
    m = shardset.load_manifest(out)
    _poison(out, m, 7)
    urls = shardset.shard_urls(out, m, "train")
    with pytest.raises(ShardError, match="sample 00000007: cannot decode image"):
        list(streaming.stream(urls, num_classes=14, shuffle_seed=None))
    got = [i for _, _, i in streaming.stream(urls, num_classes=14, shuffle_seed=None, bad_samples="skip")]
    assert len(got) == 279 and 7 not in got
    assert "skipping a bad sample: shard" in capfd.readouterr().err
