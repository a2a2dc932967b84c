"""Streaming: object-store URLs (through fsspec; here its in-memory store), per-preset
transforms, loader workers."""

from __future__ import annotations

import fsspec
import numpy as np
import pytest
import torch

from pipeline import shardset
from pipeline.errors import ShardError
from pipeline.prep import job as prep
from pipeline.training.data import assign, streaming
from pipeline.training.methods.state import build_transforms
from pipeline.training.settings.config import Config, DataConfig
from tests import fakes
from tests.fakes import c1m_cfg, quiet


@pytest.fixture(scope="module")
def c1m_shards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("c1m")
    tree = fakes.make_clothing1m(tmp / "clothing1m")
    return prep.prepare(c1m_cfg(tree.root, shard_size=64), tmp / "out", log=quiet)


def test_streaming_from_an_object_store_url(c1m_shards):
    fs = fsspec.filesystem("memory")
    for p in c1m_shards.iterdir():
        fs.pipe(f"/bucket/c1m/{p.name}", p.read_bytes())
    url = "memory://bucket/c1m"
    m = shardset.load_manifest(url)
    shardset.verify(url, m, level="full")
    labels = shardset.read_labels_table(url, m)
    assert len(labels["label"]) == 280
    got = []
    plan = assign.plan_epoch(m, url, world=2, seed=1, batch_size=16)
    for rank in range(2):
        ds = streaming.stream(plan.parts[rank], num_classes=14, shuffle_seed=1, shuffle_buffer=16, channels=3)
        for x, y, i in ds:
            assert y == labels["label"][i]
            got.append(i)
    assert sorted(got) == list(range(280))
    fs.rm("/bucket/c1m/train-00001.tar")
    with pytest.raises(ShardError, match="memory://bucket/c1m/train-00001.tar: listed in the manifest but missing"):
        shardset.verify(url, m, level="size")


def test_imagenet_transform_gives_fixed_size_crops(c1m_shards):
    m = shardset.load_manifest(c1m_shards)
    cfg = Config(data=DataConfig(dataset="clothing1m", noise="none", noise_rate=0.0, image_size=16))
    train_tf, eval_tf, size = build_transforms(cfg, m)
    assert size == 16
    urls = shardset.shard_urls(c1m_shards, m, "val")
    xs = [x for x, _, _ in streaming.stream(urls, num_classes=14, shuffle_seed=None, channels=3, transform=eval_tf)]
    assert all(x.shape == (3, 16, 16) and x.dtype == torch.uint8 for x in xs)
    again = [x for x, _, _ in streaming.stream(urls, num_classes=14, shuffle_seed=None, channels=3, transform=eval_tf)]
    assert all(torch.equal(a, b) for a, b in zip(xs, again))  # evaluation is deterministic
    torch.manual_seed(0)
    aug = [x for x, _, _ in streaming.stream(urls, num_classes=14, shuffle_seed=None, channels=3, transform=train_tf)]
    assert all(x.shape == (3, 16, 16) for x in aug) and any(not torch.equal(a, b) for a, b in zip(xs, aug))


def test_cifar_transform_crops_with_padding_and_flips(tmp_path):
    archive, a = fakes.make_cifar_archive(tmp_path / "raw")
    out = prep.prepare(
        DataConfig(dataset="cifar10", raw_dir=str(archive), n_meta=20, n_val=20, noise="none"),
        tmp_path / "out",
        log=quiet,
    )
    m = shardset.load_manifest(out)
    cfg = Config(data=DataConfig(dataset="cifar10"))
    train_tf, eval_tf, size = build_transforms(cfg, m)
    assert size == 32 and eval_tf is None
    x, _ = streaming.load_split_tensors(out, m, "test", channels=3)
    torch.manual_seed(0)
    y = torch.stack([train_tf(img) for img in x])
    assert y.shape == x.shape
    assert (y != x).any(dim=(1, 2, 3)).float().mean() > 0.5
    shifted_zero = (y == 0).all(dim=1).any(dim=(1, 2))  # padding shows as black rows or columns
    assert shifted_zero.any()


def test_two_loader_workers_see_every_sample_once(c1m_shards):
    m = shardset.load_manifest(c1m_shards)
    cfg = Config(data=DataConfig(dataset="clothing1m", noise="none", noise_rate=0.0, image_size=16))
    train_tf, _, _ = build_transforms(cfg, m)
    ds = streaming.stream(
        shardset.shard_urls(c1m_shards, m, "train"),
        num_classes=14,
        shuffle_seed=3,
        shuffle_buffer=32,
        expected=shardset.expected_counts(c1m_shards, m, "train"),
        channels=3,
        transform=train_tf,
    )
    idx = np.concatenate([i.numpy() for _, _, i in streaming.loader(ds, batch_size=32, workers=2)])
    assert sorted(idx.tolist()) == list(range(280))
