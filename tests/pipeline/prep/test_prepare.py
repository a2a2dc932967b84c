"""prepare on fakes of Clothing1M, CIFAR-10/100 and an image folder in their real
formats: counts per split, labels, disjointness, the manifest, resuming, parallel
writing, externally supplied labels."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import shardset
from pipeline.errors import PipelineError
from pipeline.prep import job as prep
from pipeline.prep import writer
from pipeline.training.data import streaming
from pipeline.training.settings.config import DataConfig
from tests import fakes
from tests.fakes import c1m_cfg, quiet


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def split_samples(out: Path, m: dict, split: str) -> dict[str, dict[str, bytes]]:
    """{source key: {field: bytes}} over a split's shards."""
    got = {}
    for rec in m["splits"][split]["shards"]:
        by_key: dict[str, dict[str, bytes]] = {}
        for name, data in members(out / rec["name"]).items():
            key, field = name.split(".", 1)
            by_key.setdefault(key, {})[field] = data
        for fields in by_key.values():
            got[fields["key.txt"].decode()] = fields
    return got


def test_clothing1m_splits_labels_and_manifest(c1m, tmp_path):
    out = prep.prepare(c1m_cfg(c1m.root), tmp_path / "out", log=quiet)
    m = shardset.load_manifest(out)
    shardset.verify(out, m, level="full")
    counts = {k: v["count"] for k, v in m["splits"].items()}
    assert counts == {"train": 280, "meta": 14, "val": 28, "test": 28}
    assert m["num_classes"] == 14 and m["classes"] == list(fakes.C1M_CLASSES)
    assert all(len(r["sha256"]) == 64 for v in m["splits"].values() for r in v["shards"])
    assert m["bad"]["skipped"] == 0 and m["removed_from_train"] == 0
    # train: noisy labels, true label exactly where the key has a clean one
    t = pq.read_table(out / shardset.LABELS_FILE).to_pydict()
    assert t["key"] == c1m.noisy_train and t["index"] == list(range(280))
    assert t["label"] == [c1m.noisy_label[k] for k in t["key"]]
    assert t["true_label"] == [c1m.clean_label.get(k) for k in t["key"]]
    assert m["noise"]["known_true_labels"] == 30
    # meta: one clean train image per class; val and test: the lists, with clean labels
    meta = split_samples(out, m, "meta")
    assert set(meta) <= set(c1m.clean_train) and not set(meta) & set(t["key"])
    assert sorted(int(f["label.cls"]) for f in meta.values()) == list(range(14))
    for split, keys in (("val", c1m.val), ("test", c1m.test)):
        got = split_samples(out, m, split)
        assert sorted(got) == sorted(keys)
        assert all(int(f["label.cls"]) == c1m.clean_label[k] for k, f in got.items())
    # images are the original JPEG bytes
    train = split_samples(out, m, "train")
    k = c1m.noisy_train[5]
    assert train[k]["jpg"] == (c1m.root / k).read_bytes()


def test_clothing1m_val_or_test_keys_in_the_noisy_list_leave_training(c1m, tmp_path):
    fakes.append_line(c1m.root / "noisy_train_key_list.txt", c1m.val[0])
    fakes.append_line(c1m.root / "noisy_label_kv.txt", f"{c1m.val[0]} 3")
    m = shardset.load_manifest(prep.prepare(c1m_cfg(c1m.root), tmp_path / "out", log=quiet))
    assert m["splits"]["train"]["count"] == 280 and m["removed_from_train"] == 1


def test_list_files_with_crlf_and_blank_lines_parse(c1m):
    raw = (c1m.root / "clean_val_key_list.txt").read_bytes()
    assert b"\r\n\r\n" in raw and raw.startswith(b"\r\n")
    from pipeline.prep.readers import read_clothing1m

    src = read_clothing1m(c1m.root)
    assert src.val.keys == c1m.val and not src.bad


def _prepared_cifar10(tmp_path, noise):
    """``(config, shard dir, manifest, label table, fake arrays)`` of the CIFAR-10 fake prepared with 40% ``noise``."""
    archive, a = fakes.make_cifar_archive(tmp_path / "raw")
    cfg = DataConfig(
        dataset="cifar10", raw_dir=str(archive.parent), n_meta=20, n_val=20, shard_size=100, noise=noise, noise_rate=0.4
    )
    out = prep.prepare(cfg, tmp_path / "out", log=quiet)
    return cfg, out, shardset.load_manifest(out), pq.read_table(out / shardset.LABELS_FILE).to_pydict(), a


def test_cifar10_archive(tmp_path):
    _, out, m, t, a = _prepared_cifar10(tmp_path, "sym")
    assert {k: v["count"] for k, v in m["splits"].items()} == {"train": 260, "meta": 20, "val": 20, "test": 100}
    assert m["image"]["channels"] == 3 and m["image"]["height"] == 32 and m["classes"][:2] == ["c0", "c1"]
    src = np.asarray(t["source_index"])
    np.testing.assert_array_equal(t["true_label"], a["train_y"][src])
    assert 0.25 < m["noise"]["realized_rate"] < 0.5
    x, y = streaming.load_split_tensors(out, m, "test", channels=3)
    np.testing.assert_array_equal(x.permute(0, 2, 3, 1).numpy(), a["test_x"])
    np.testing.assert_array_equal(y.numpy(), a["test_y"])


def test_cifar100_asym_noise_stays_inside_the_super_class(tmp_path):
    archive, a = fakes.make_cifar_archive(tmp_path / "raw", "cifar100", n_per_batch=100)
    cfg = DataConfig(
        dataset="cifar100", raw_dir=str(archive), n_meta=0 or 100, n_val=0, shard_size=200, noise="asym", noise_rate=0.5
    )
    m = shardset.load_manifest(prep.prepare(cfg, tmp_path / "out", log=quiet))
    t = pq.read_table(tmp_path / "out" / shardset.LABELS_FILE).to_pydict()
    given, true = np.asarray(t["label"]), np.asarray(t["true_label"])
    flipped = given != true
    assert 0.3 < flipped.mean() < 0.7
    assert (given[flipped] // 5 == true[flipped] // 5).all()  # the fake's super-class of f is f // 5
    assert m["noise"]["mapping"]["4"] == 0 and m["noise"]["mapping"]["0"] == 1


def test_cifar10_instance_dependent_noise_is_planned_and_recorded(tmp_path):
    cfg, _, m, t, _ = _prepared_cifar10(tmp_path, "instance")
    given, true = np.asarray(t["label"]), np.asarray(t["true_label"])
    assert m["noise"]["kind"] == "instance" and 0.25 < m["noise"]["realized_rate"] < 0.55
    assert m["noise"]["realized_rate"] == pytest.approx((given != true).mean())
    np.testing.assert_allclose(np.asarray(m["noise"]["transition"]).sum(1), 1.0)
    again = prep.prepare(cfg, tmp_path / "again", log=quiet)  # seeded: the same labels
    assert pq.read_table(again / shardset.LABELS_FILE).to_pydict()["label"] == t["label"]


def test_instance_noise_without_images_in_memory_is_refused_by_name():
    from pipeline.prep.plan import synthetic_noise
    from pipeline.prep.readers import Items

    files = Items(
        keys=["a", "b"],
        labels=np.array([0, 1]),
        true=np.array([0, 1]),
        source_index=np.arange(2),
        paths=["a.jpg", "b.jpg"],
    )
    opts = DataConfig(dataset="cifar10", noise="instance", noise_rate=0.4)
    with pytest.raises(PipelineError, match="instance-dependent noise needs the images in memory"):
        synthetic_noise(opts, files, 2, None)


def test_truncated_cifar_archive_is_named(tmp_path):
    archive, _ = fakes.make_cifar_archive(tmp_path / "raw")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(PipelineError, match=f"{archive}: truncated or corrupt archive"):
        prep.prepare(
            DataConfig(dataset="cifar10", raw_dir=str(archive), n_meta=20, n_val=20), tmp_path / "out", log=quiet
        )
    assert not (tmp_path / "out").exists()


def test_folder_tree_with_clean_listing(tmp_path):
    truth = fakes.make_folder(tmp_path / "imgs")
    clean = [(p, ["cat", "dog", "frog"][y]) for p, y in list(truth.items()) if int(p[-7:-4]) < 10]
    fakes.write_csv(tmp_path / "imgs" / "clean.csv", "path,label", clean)
    cfg = DataConfig(
        dataset="folder",
        raw_dir=str(tmp_path / "imgs"),
        clean_list=str(tmp_path / "imgs/clean.csv"),
        noise="none",
        n_meta=12,
        n_val=9,
        shard_size=32,
    )
    out = prep.prepare(cfg, tmp_path / "out", log=quiet)
    m = shardset.load_manifest(out)
    assert m["classes"] == ["cat", "dog", "frog"] and m["meta_is_clean"]
    counts = {k: v["count"] for k, v in m["splits"].items()}
    assert counts == {"train": 90 - 21, "meta": 12, "val": 9, "test": 0}
    t = pq.read_table(out / shardset.LABELS_FILE).to_pydict()
    assert t["label"] == [truth[k] for k in t["key"]]
    meta = split_samples(out, m, "meta")
    assert not set(meta) & set(t["key"]) and "png" in split_samples(out, m, "train")["cat/000.png"]


def test_folder_listing_with_integer_labels_and_no_clean_set(tmp_path):
    truth = fakes.make_folder(tmp_path / "imgs")
    fakes.write_csv(tmp_path / "list.csv", "path,label", [(f"imgs/{p}", y) for p, y in truth.items()])
    cfg = DataConfig(
        dataset="folder", raw_dir=str(tmp_path / "list.csv"), noise="none", n_meta=6, n_val=3, shard_size=32
    )
    m = shardset.load_manifest(prep.prepare(cfg, tmp_path / "out", log=quiet))
    assert m["classes"] == ["0", "1", "2"] and not m["meta_is_clean"]
    assert m["splits"]["train"]["count"] == 81


def test_labels_file_replaces_training_labels(c1m, tmp_path):
    keys = c1m.noisy_train[:10]
    fakes.write_csv(tmp_path / "relabel.csv", "key,label", [(k, c1m.true[k]) for k in keys] + [("no/such.jpg", 1)])
    with pytest.raises(PipelineError, match="relabel.csv.*no/such.jpg.*no sample of the raw training set has this key"):
        prep.prepare(c1m_cfg(c1m.root, labels_file=str(tmp_path / "relabel.csv")), tmp_path / "out", log=quiet)
    out = prep.prepare(
        c1m_cfg(c1m.root, labels_file=str(tmp_path / "relabel.csv"), skip_bad=True), tmp_path / "out", log=quiet
    )
    m = shardset.load_manifest(out)
    assert m["bad"]["by_reason"] == {"not_in_training_set": 1}
    t = pq.read_table(out / shardset.LABELS_FILE).to_pydict()
    assert t["label"][:10] == [c1m.true[k] for k in keys]
    assert t["label"][10:] == [c1m.noisy_label[k] for k in c1m.noisy_train[10:]]
    assert m["labels_file"]["applied"] == 10 and m["labels_file"]["not_in_training_split"] == 0


def test_labels_file_by_index_on_cifar(tmp_path):
    archive, a = fakes.make_cifar_archive(tmp_path / "raw")
    table = tmp_path / "human.parquet"
    import pyarrow as pa

    pq.write_table(pa.table({"index": np.arange(300), "label": (a["train_y"] + 1) % 10}), table)
    cfg = DataConfig(dataset="cifar10", raw_dir=str(archive), n_meta=20, n_val=20, noise="none", labels_file=str(table))
    out = prep.prepare(cfg, tmp_path / "out", log=quiet)
    t = pq.read_table(out / shardset.LABELS_FILE).to_pydict()
    np.testing.assert_array_equal(t["label"], (a["train_y"][t["source_index"]] + 1) % 10)
    assert shardset.load_manifest(out)["noise"]["realized_rate"] == 1.0


def test_interrupted_prepare_resumes_and_keeps_finished_shards(c1m, tmp_path, monkeypatch):
    cfg = c1m_cfg(c1m.root, shard_size=40)
    whole = prep.prepare(cfg, tmp_path / "whole", log=quiet)
    real, calls = writer.write_task, []

    def dies_on_third(job):
        calls.append(job[1].name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(writer, "write_task", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare(cfg, tmp_path / "out", log=quiet)
    partial = prep.partial_dir(tmp_path / "out")
    assert not (tmp_path / "out").exists() and sorted(p.name for p in partial.glob("*.tar")) == sorted(calls[:2])
    first = {n: (partial / n).stat().st_mtime_ns for n in calls[:2]}
    monkeypatch.setattr(writer, "write_task", real)
    logs = []
    out = prep.prepare(cfg, tmp_path / "out", log=logs.append)
    assert any("2 already complete" in line for line in logs)
    assert {n: (out / n).stat().st_mtime_ns for n in calls[:2]} == first
    a, b = shardset.load_manifest(whole), shardset.load_manifest(out)
    assert a["splits"] == b["splits"] and a["labels"]["sha256"] == b["labels"]["sha256"]
    assert not partial.exists()


def test_parallel_writing_gives_the_same_shards(c1m, tmp_path):
    one = shardset.load_manifest(prep.prepare(c1m_cfg(c1m.root, shard_size=50), tmp_path / "one", log=quiet))
    two = shardset.load_manifest(
        prep.prepare(c1m_cfg(c1m.root, shard_size=50, prepare_workers=2), tmp_path / "two", log=quiet)
    )
    assert one["splits"] == two["splits"]


def test_an_existing_output_with_other_options_is_refused_and_kept(c1m, tmp_path):
    out = prep.prepare(c1m_cfg(c1m.root), tmp_path / "out", log=quiet)
    before = (out / "manifest.json").read_bytes()
    assert prep.prepare(c1m_cfg(c1m.root), out, log=quiet) == out
    with pytest.raises(PipelineError, match="prepared with other options \\(n_meta differ\\)"):
        prep.prepare(c1m_cfg(c1m.root, n_meta=28), out, log=quiet)
    assert (out / "manifest.json").read_bytes() == before


def test_same_seed_same_shard_order_on_clothing_shards(c1m, tmp_path):
    out = prep.prepare(c1m_cfg(c1m.root, shard_size=40), tmp_path / "out", log=quiet)
    m = shardset.load_manifest(out)
    urls = shardset.shard_urls(out, m, "train")

    def order(seed):
        return [int(i) for _, _, i in streaming.stream(urls, num_classes=14, shuffle_seed=seed, shuffle_buffer=50)]

    assert order(4) == order(4) != order(5)
    assert sorted(order(4)) == list(range(280))


def test_one_label_listing_rule_first_label_wins_conflicts_reported_and_left_out():
    from pipeline.prep.listings import Bad, first_labels

    bad: list = []
    rows = [(1, "a", 0), (2, "b", 1), (3, "a", 0), (4, "b", 2), (5, "c", 3), (6, "b", 1)]
    out = first_labels(iter(rows), file="f.csv", bad=bad, show=lambda i: f"c{i}")
    assert out == {"a": 0, "c": 3}
    assert [str(b) for b in bad] == ["f.csv:4: b: labelled c1 on line 2 and c2 here"]
    assert [b.kind for b in bad] == ["conflicting_labels"]
    with pytest.raises(ValueError, match="bad-record kind"):
        Bad("f.csv", "k", "why", 1, "a guess")
