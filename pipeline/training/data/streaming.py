"""Streaming a shard directory while training: a WebDataset pipeline per split (its tars
read by :mod:`pipeline.shardset.tar`, 4× faster than ``tarfile``) whose
samples are decoded through a whitelist (PNG/JPEG images, integer ``.cls`` labels; nothing
is unpickled), with per-shard count checks and bad samples reported by shard and key.
Object-store URLs stream through fsspec (:mod:`pipeline.storage`)."""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from pipeline.errors import LabelMismatchError, ShardError
from pipeline.shardset import expected_counts, shard_urls
from pipeline.shardset.samples import checked_fields, checked_label, decode_image, open_shard, sample_index
from pipeline.shardset.tar import tar_samples


class ShardStream(wds.DataPipeline, wds.FluidInterface):
    """A WebDataset pipeline over shard URLs (``.select``, ``.compose``, ``.shuffle`` …)
    whose tars are read by :mod:`pipeline.shardset.tar`."""


class SourceList(torch.utils.data.IterableDataset):
    """The first stage of a :class:`ShardStream`: ``{"url", and for a part "first", "stop"}`` dicts."""

    def __init__(self, sources: list[dict]) -> None:
        super().__init__()
        self.sources = sources

    def __len__(self) -> int:
        return len(self.sources)

    def __iter__(self):
        for s in self.sources:
            yield dict(s)


class Decoder:
    """Whitelisted decode of one raw WebDataset sample → ``(image (C, H, W) uint8, label, index)``.

    ``index`` is the key as an integer: the bank row for train shards, the position
    otherwise. ``transform`` (uint8 CHW → uint8 CHW, e.g. random crop) runs last.
    ``labels`` ((N,) int64, train shards): the label table's given labels, which each
    sample's ``.cls`` must match (:func:`checked_label`).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        channels: int = 0,
        transform: Callable | None = None,
        labels: np.ndarray | None = None,
    ) -> None:
        self.num_classes, self.channels, self.transform = num_classes, channels, transform
        self.labels = labels

    def __call__(self, sample: dict) -> tuple[torch.Tensor, int, int]:
        where, img_field = checked_fields(sample)
        label, index = checked_label(sample, where, num_classes=self.num_classes, table=self.labels)
        img = decode_image(sample[img_field], where=where, channels=self.channels)
        x = torch.from_numpy(img.copy())
        x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1).contiguous()
        if self.transform is not None:
            x = self.transform(x)
        return x, label, index


class RawDecoder(Decoder):
    """Like :class:`Decoder`, but the image stays encoded: ``(bytes (n,) uint8, label, index,
    where)``, decoded later on the device (:mod:`pipeline.training.data.device_decode`)."""

    def __call__(self, sample: dict) -> tuple[torch.Tensor, int, int, str]:
        where, img_field = checked_fields(sample)
        label, index = checked_label(sample, where, num_classes=self.num_classes, table=self.labels)
        blob = torch.frombuffer(bytearray(sample[img_field]), dtype=torch.uint8)
        return blob, label, index, where


def collate_raw(batch: list[tuple]) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, list[str]]:
    """A batch of :class:`RawDecoder` samples: ``(blobs, labels (n,), indices (n,), where)``."""
    blobs, labels, idx, where = zip(*batch)
    return list(blobs), torch.tensor(labels), torch.tensor(idx), list(where)


def count_check(expected: dict[str, int]):
    """A pipeline stage: passes samples through, then checks each shard it read gave
    the number of samples expected of it (catches a tar cut at a member boundary)."""

    def stage(samples):
        seen: dict[str, int] = {}
        for s in samples:
            seen[s["__url__"]] = seen.get(s["__url__"], 0) + 1
            yield s
        for url, n in seen.items():
            if n != expected.get(url, n):
                raise ShardError(f"shard {url}: yielded {n} samples, the manifest says {expected[url]}")

    return stage


def decode_stage(decoder: Decoder, bad_samples: str):
    """Decode every sample; with ``bad_samples='skip'`` one that fails is reported on
    stderr and left out (its bank row keeps its previous soft label this epoch). A shard
    that disagrees with the label table is never skipped."""

    def stage(samples):
        for s in samples:
            try:
                yield decoder(s)
            except ShardError as e:
                if bad_samples != "skip" or isinstance(e, LabelMismatchError):
                    raise
                print(f"warning: skipping a bad sample: {e}", file=sys.stderr, flush=True)

    return stage


def stream(
    sources: list,
    *,
    num_classes: int,
    shuffle_seed: int | None,
    shuffle_buffer: int = 0,
    expected: dict[str, int] | None = None,
    channels: int = 0,
    transform: Callable | None = None,
    bad_samples: str = "error",
    exclude: np.ndarray | None = None,
    raw: bool = False,
    labels: np.ndarray | None = None,
) -> ShardStream:
    """A WebDataset pipeline yielding ``(image (C, H, W) uint8, label, index)``.

    ``sources`` are whole shards (local paths or URLs: ``s3://``, ``gs://`` … through
    fsspec, ``http(s)://`` through webdataset; see :func:`open_shard`), read in a seeded random
    order when ``shuffle_seed`` is set, or a rank's
    :class:`~pipeline.training.data.assign.Part` s (key ranges of shards), read in the order
    given: the epoch's plan has shuffled them. ``expected`` (per-url counts of whole
    shards) turns on the count check; a part checks its key range itself. With
    ``shuffle_seed`` set the undecoded samples pass a shuffle buffer seeded from it.
    ``transform`` runs on each decoded image. ``exclude`` ((N,) bool by index) leaves
    samples out after the shuffle, before decoding: a run resumed inside an epoch skips
    what it already trained on, and the rest come in the order they would have come.
    ``raw=True`` leaves the images encoded (:class:`RawDecoder`; batch them with
    ``loader(..., collate_fn=collate_raw)``) and ignores ``transform``. ``labels`` ((N,)
    int64, for train shards): the label table's given labels; a sample whose ``.cls``
    differs raises :class:`~pipeline.errors.LabelMismatchError` naming its shard and key.
    """
    sources = list(sources)
    if sources and isinstance(sources[0], str):
        if shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(sources)
        sources = [{"url": u} for u in sources]
    else:
        sources = [{"url": p.url, "first": p.first, "stop": p.stop} for p in sources]
    ds = ShardStream(SourceList(sources), wds.split_by_worker, partial(tar_samples, open_url=open_shard))
    if expected is not None:
        ds = ds.compose(count_check(expected))
    if shuffle_seed is not None and shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=shuffle_seed)
    if exclude is not None:
        ds = ds.select(lambda s: not exclude[sample_index(s)])
    decoder = (
        RawDecoder(num_classes, channels=channels, labels=labels)
        if raw
        else Decoder(num_classes, channels=channels, transform=transform, labels=labels)
    )
    return ds.compose(decode_stage(decoder, bad_samples))


def loader(
    ds, *, batch_size: int, workers: int, seed: int = 0, collate_fn: Callable | None = None, pin_memory: bool = False
) -> torch.utils.data.DataLoader:
    """Batches of ``ds``. The loader's own seed (its processes' random augmentation)
    comes from ``seed``, not from the global RNG: starting a stream (an epoch's, or an
    evaluation split's first decode) draws nothing from the training's random state, so
    a resumed run draws what an uninterrupted one does. ``pin_memory``: batches in
    page-locked memory, for non-blocking copies to a GPU."""
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        num_workers=workers,
        persistent_workers=False,
        generator=gen,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
    )


def load_split_tensors(
    shard_dir: str | Path,
    manifest: dict,
    split: str,
    *,
    transform: Callable | None = None,
    channels: int = 0,
    bad_samples: str = "error",
) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole (small) split in memory: ``(images (N, C, H, W) uint8, labels (N,) int64)`` in index order."""
    ds = stream(
        shard_urls(shard_dir, manifest, split),
        num_classes=manifest["num_classes"],
        shuffle_seed=None,
        expected=expected_counts(shard_dir, manifest, split),
        channels=channels,
        transform=transform,
        bad_samples=bad_samples,
    )
    xs, ys, idxs = [], [], []
    for x, y, idx in loader(ds, batch_size=512, workers=0):
        xs.append(x)
        ys.append(y)
        idxs.append(idx)
    if not xs:
        raise ShardError(f"{shard_dir}: split {split!r} is empty")
    order = torch.cat(idxs).argsort()
    return torch.cat(xs)[order], torch.cat(ys)[order]
