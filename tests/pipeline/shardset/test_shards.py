"""Shard round trip, manifest, and every kind of bad shard."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import shardset
from pipeline.errors import ShardError
from pipeline.prep import writer
from pipeline.training.data import streaming
from tests.conftest import fake_images


def test_round_trip_gives_back_images_labels_and_indices(fake_shards, fake_data_cfg):
    m = shardset.load_manifest(fake_shards)
    raw = fake_images()
    assert {k: v["count"] for k, v in m["splits"].items()} == {"train": 500, "meta": 50, "val": 50, "test": 200}
    assert m["num_classes"] == 10 and m["image"] == {
        "channels": 1,
        "height": 28,
        "width": 28,
        "mean": [0.2],
        "std": [0.3],
    }
    assert 0.3 < m["noise"]["realized_rate"] < 0.42
    shardset.verify(fake_shards, m, level="full")
    labels = shardset.read_labels_table(fake_shards, m)
    assert abs((labels["label"] != labels["true_label"]).mean() - m["noise"]["realized_rate"]) < 1e-12
    src = np.asarray(pq.read_table(fake_shards / shardset.LABELS_FILE)["source_index"])
    ds = streaming.stream(
        shardset.shard_urls(fake_shards, m, "train"), num_classes=10, shuffle_seed=3, shuffle_buffer=64
    )
    seen = set()
    for img, label, index in ds:
        assert label == labels["label"][index]
        np.testing.assert_array_equal(img.numpy()[0], raw.train_x[src[index]])
        assert raw.train_y[src[index]] == labels["true_label"][index]
        seen.add(index)
    assert seen == set(range(500))
    # meta and val are clean and disjoint from train
    meta_x, meta_y = streaming.load_split_tensors(fake_shards, m, "meta")
    assert len(meta_y) == 50 and np.bincount(meta_y.numpy()).tolist() == [5] * 10


def test_same_seed_same_order(fake_shards):
    m = shardset.load_manifest(fake_shards)

    def order(s):
        return [
            i
            for _, _, i in streaming.stream(
                shardset.shard_urls(fake_shards, m, "train"),
                num_classes=10,
                shuffle_seed=s,
                shuffle_buffer=64,
            )
        ]

    assert order(5) == order(5) != order(6)


def test_rewriting_is_skipped_and_temp_dirs_do_not_linger(fake_shards, fake_data_cfg):
    from pipeline.prep.job import ensure_shards

    before = (fake_shards / "manifest.json").stat().st_mtime_ns
    assert ensure_shards(fake_data_cfg, raw=fake_images(), log=lambda s: None) == str(fake_shards)
    assert (fake_shards / "manifest.json").stat().st_mtime_ns == before
    assert [p.name for p in fake_shards.parent.iterdir()] == [fake_shards.name]


def _first(shard_dir, split="train"):
    m = shardset.load_manifest(shard_dir)
    return m, shard_dir / m["splits"][split]["shards"][0]["name"]


def test_missing_shard(fake_shards):
    m, path = _first(fake_shards)
    path.unlink()
    with pytest.raises(ShardError, match=f"{path}: listed in the manifest but missing"):
        shardset.verify(fake_shards, m, level="size")


def test_sha256_mismatch(fake_shards):
    m, path = _first(fake_shards)
    data = bytearray(path.read_bytes())
    data[700] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=f"{path}: sha256 mismatch"):
        shardset.verify(fake_shards, m, level="full")


def _truncate(path: Path, keep: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(keep)


def test_truncated_shard_is_caught_by_size_and_while_streaming(fake_shards):
    m, path = _first(fake_shards)
    _truncate(path, path.stat().st_size // 2 + 100)
    with pytest.raises(ShardError, match=f"{path}: .* bytes, the manifest says"):
        shardset.verify(fake_shards, m, level="size")
    ds = streaming.stream([str(path)], num_classes=10, shuffle_seed=None)
    with pytest.raises(ShardError, match=f"shard {path}: truncated or corrupt tar"):
        list(ds)


def test_shard_cut_at_a_member_boundary_is_caught_by_the_sample_count(fake_shards):
    m, path = _first(fake_shards)
    import tarfile

    with tarfile.open(path) as tar:
        members = tar.getmembers()
    cut = members[30].offset  # a clean tar prefix: tarfile sees a shorter archive
    _truncate(path, cut)
    ds = streaming.stream(
        [str(path)], num_classes=10, shuffle_seed=None, expected=shardset.expected_counts(fake_shards, m, "train")
    )
    with pytest.raises(ShardError, match=f"shard {path}: yielded \\d+ samples, the manifest says 128"):
        list(streaming.loader(ds, batch_size=16, workers=0))


def test_label_out_of_range_names_the_shard_and_sample(tmp_path):
    path = tmp_path / "bad-00000.tar"
    img = np.zeros((2, 28, 28), np.uint8)
    writer.write_split(
        tmp_path, "bad", img, np.array([3, 10]), true_labels=None, keys=["00000000", "00000001"], shard_size=10
    )
    with pytest.raises(ShardError, match=f"shard {path}, sample 00000001: label 10 is outside 0..9"):
        list(streaming.stream([str(path)], num_classes=10, shuffle_seed=None))


def test_label_table_out_of_range_names_the_file_and_sample(fake_shards):
    import pyarrow as pa

    m = shardset.load_manifest(fake_shards)
    path = fake_shards / shardset.LABELS_FILE
    t = pq.read_table(path).to_pydict()
    t["label"][7] = 12
    pq.write_table(pa.table(t), path)
    with pytest.raises(ShardError, match=f"{path}: sample 7 \\(key {t['key'][7]}\\): label 12 is outside 0..9"):
        shardset.read_labels_table(fake_shards, m)


def test_manifest_problems(tmp_path):
    with pytest.raises(ShardError, match="no manifest"):
        shardset.load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ShardError, match="not valid JSON"):
        shardset.load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ShardError, match="format"):
        shardset.load_manifest(tmp_path)
