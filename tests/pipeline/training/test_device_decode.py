"""``data.decode=gpu``: the loader reads encoded bytes, the device decodes and augments.

Without a GPU the same path runs on the CPU device; its images must match the CPU
path's (PIL decode in the loader) in shape, dtype and value range, bad samples must be
named as on the CPU path, and a JPEG/PNG mix must decode. With CUDA present, the nvJPEG
path is checked against the CPU one as well.
"""

from __future__ import annotations

import pytest
import torch

from pipeline import shardset
from pipeline.errors import ShardError
from pipeline.prep import job as prep
from pipeline.rundir import RunDir
from pipeline.training.data import device_decode, streaming
from pipeline.training.methods.state import build_transforms
from pipeline.training.run.epoch import rebatch
from pipeline.training.settings.config import Config, DataConfig
from tests import fakes
from tests.fakes import c1m_cfg, quiet

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def c1m_shards(tmp_path_factory):
    """Clothing1M-format shards of the fakes' JPEGs (their original bytes)."""
    tmp = tmp_path_factory.mktemp("c1m")
    tree = fakes.make_clothing1m(tmp / "clothing1m")
    return prep.prepare(c1m_cfg(tree.root, shard_size=64), tmp / "out", log=quiet)


def both_paths(shards, split, *, transform, channels=3, device="cpu", num_classes=14, batch_size=8, seed=0):
    """``(CPU-path images, device-path images, labels, indices)`` of a split, in stream order."""
    m = shardset.load_manifest(shards)
    urls = shardset.shard_urls(shards, m, split)
    cpu = list(
        streaming.stream(urls, num_classes=num_classes, shuffle_seed=None, channels=channels, transform=transform)
    )
    raw = streaming.stream(urls, num_classes=num_classes, shuffle_seed=None, channels=channels, raw=True)
    batches = streaming.loader(raw, batch_size=batch_size, workers=0, collate_fn=streaming.collate_raw)
    dev = list(
        device_decode.device_batches(
            batches, device=torch.device(device), channels=channels, transform=transform, seed=seed
        )
    )
    return cpu, dev


@pytest.mark.parametrize("device", DEVICES)
def test_device_decode_matches_the_cpu_path(c1m_shards, device):
    m = shardset.load_manifest(c1m_shards)
    cfg = Config(data=DataConfig(dataset="clothing1m", noise="none", noise_rate=0.0, image_size=16))
    train_tf, eval_tf, _ = build_transforms(cfg, m)
    cpu, dev = both_paths(c1m_shards, "val", transform=eval_tf, device=device)
    x = torch.cat([b[0] for b in dev]).cpu()
    ref = torch.stack([s[0] for s in cpu])
    assert x.shape == ref.shape == (28, 3, 16, 16) and x.dtype == torch.uint8
    assert torch.equal(torch.cat([b[1] for b in dev]), torch.tensor([s[1] for s in cpu]))
    assert torch.equal(torch.cat([b[2] for b in dev]), torch.tensor([s[2] for s in cpu]))
    diff = (x.float() - ref.float()).abs()
    assert diff.mean() < 2.0 and diff.max() <= 64, (diff.mean(), diff.max())  # two JPEG decoders, one resize
    _, aug = both_paths(c1m_shards, "val", transform=train_tf, device=device)
    xa = torch.cat([b[0] for b in aug])
    assert xa.shape == ref.shape and xa.dtype == torch.uint8 and xa.device.type == device
    assert not torch.equal(xa.cpu(), x)  # crops and flips happened
    _, again = both_paths(c1m_shards, "val", transform=train_tf, device=device)
    assert torch.equal(torch.cat([b[0] for b in again]), xa)  # seeded: the same draws
    state = torch.get_rng_state()
    augment = device_decode.DeviceAugment(train_tf, seed=5)
    augment([im.to(device) for im in ref[:4]])
    assert torch.equal(torch.get_rng_state(), state)  # the training's random state is left alone


def test_jpeg_and_png_mix_in_grayscale_and_rgb(tmp_path):
    truth = fakes.make_folder(tmp_path / "imgs")  # one PNG per class among the JPEGs
    cfg = DataConfig(dataset="folder", raw_dir=str(tmp_path / "imgs"), noise="none", n_meta=6, n_val=3, shard_size=32)
    out = prep.prepare(cfg, tmp_path / "out", log=quiet)
    pngs = sum(p.endswith(".png") for p in truth)
    assert pngs >= 1
    for channels in (3, 1):
        cpu, dev = both_paths(out, "train", transform=None, channels=channels, num_classes=3)
        x = torch.cat([b[0] for b in dev])
        ref = torch.stack([s[0] for s in cpu])
        assert x.shape == ref.shape and x.shape[1] == channels
        assert (x.float() - ref.float()).abs().mean() < 2.0


def test_a_bad_image_is_named_or_skipped(c1m_shards):
    m = shardset.load_manifest(c1m_shards)
    urls = shardset.shard_urls(c1m_shards, m, "val")
    raw = list(
        streaming.loader(
            streaming.stream(urls, num_classes=14, shuffle_seed=None, channels=3, raw=True),
            batch_size=8,
            workers=0,
            collate_fn=streaming.collate_raw,
        )
    )
    blobs, y, idx, where = raw[0]
    broken = blobs[:3] + [blobs[3][:40]] + blobs[4:]  # a JPEG cut short
    batch = [(broken, y, idx, where)]
    with pytest.raises(ShardError, match=f"{where[3]}: cannot decode image on cpu"):
        list(device_decode.device_batches(batch, device=torch.device("cpu"), channels=3, transform=None, seed=0))
    ((x, y2, idx2),) = device_decode.device_batches(
        batch, device=torch.device("cpu"), channels=3, transform=None, seed=0, bad_samples="skip"
    )
    assert len(x) == len(y2) == len(idx2) == 7 and idx[3] not in idx2.tolist()


def test_rebatch_joins_lists_of_encoded_images():
    def b(lo, hi):
        r = list(range(lo, hi))
        return [torch.tensor([v], dtype=torch.uint8) for v in r], torch.tensor(r), torch.tensor(r), [str(v) for v in r]

    out = list(rebatch([b(0, 5), b(5, 7), b(7, 12)], 4))
    assert [len(o[1]) for o in out] == [4, 4, 4]
    assert [int(t) for o in out for t in o[0]] == list(range(12)) and sum((o[3] for o in out), []) == [
        str(v) for v in range(12)
    ]


def test_decode_option_is_validated():
    with pytest.raises(Exception, match="data.decode must be cpu\\|gpu"):
        DataConfig(decode="nvjpeg")


def test_a_jpeg_the_device_decoder_refuses_falls_back_to_the_cpu(c1m_shards, monkeypatch):
    """nvJPEG refuses some valid JPEGs (CMYK, 12-bit): such an image is decoded on the CPU and
    moved, not failed or skipped. The refusal is simulated: the device decoder raises for one
    blob, as nvJPEG does, and the batch must still come out whole and equal to the CPU's."""
    m = shardset.load_manifest(c1m_shards)
    urls = shardset.shard_urls(c1m_shards, m, "val")
    raw = list(
        streaming.loader(
            streaming.stream(urls, num_classes=14, shuffle_seed=None, channels=3, raw=True),
            batch_size=8,
            workers=0,
            collate_fn=streaming.collate_raw,
        )
    )
    blobs, y, idx, where = raw[0]
    refused = blobs[2]
    real = device_decode.decode_jpeg

    def nvjpeg(data, **kw):
        if isinstance(data, list) and any(d is refused for d in data) or data is refused:
            raise RuntimeError("nvjpegDecode failed: NVJPEG_STATUS_JPEG_NOT_SUPPORTED")
        return real(data, **kw)

    expected, _ = device_decode.decode_images(blobs, where, device=torch.device("cpu"), channels=3)
    monkeypatch.setattr(device_decode, "decode_jpeg", nvjpeg)
    got, kept = device_decode.decode_images(blobs, where, device=torch.device("cpu"), channels=3)
    assert kept == list(range(len(blobs)))
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


@pytest.mark.parametrize("device", DEVICES)
def test_a_short_run_of_the_real_loop_with_device_decode_and_channels_last(c1m_shards, tmp_path, device):
    """The training loop itself (not only its parts) with ``data.decode=gpu``,
    ``model.channels_last=true`` and ``optim.precision=auto`` (bf16 on a GPU that has it):
    two epochs of MSLC on Clothing1M-format JPEG shards finish with finite losses and a
    label table. On a CPU it is the same code on the CPU device."""
    import json
    import math

    from pipeline.training.run.checkpoint import LocalReporter
    from pipeline.training.settings.cli import absolutize, load_config
    from pipeline.worker import run

    cfg = absolutize(
        load_config(
            "clothing1m",
            [
                f"data.shards={c1m_shards}",
                "data.decode=gpu",
                "model.channels_last=true",
                "optim.precision=auto",
                f"model.arch={'resnet18' if device == 'cuda' else 'small-cnn'}",
                "model.pretrained=false",
                "data.image_size=32",
                "data.loader_workers=0",
                "optim.epochs=2",
                "meta.warmup_epochs=1",
                "optim.milestones=[2]",
                "optim.batch_size=16",
                "meta.meta_batch_size=8",
                "data.n_val=0",
                f"run.storage_path={tmp_path}",
                "run.name=epoch",
                "run.tensorboard=false",
                "run.report=false",
                "scale.use_gpu=false",
            ],
        )
    )
    res = run(cfg, LocalReporter(tmp_path / "epoch"), torch.device(device), log=lambda s: None)
    epochs = json.loads((RunDir(tmp_path / "epoch").metrics).read_text())["epochs"]
    assert [e["phase"] for e in epochs] == ["warmup", "mslc"]
    assert all(math.isfinite(e["train_loss"]) for e in epochs)
    assert (RunDir(tmp_path / "epoch").labels).is_file() and res["summary"]
