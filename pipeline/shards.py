"""WebDataset shards: writing them with a manifest, verifying, and streaming them.

Layout of a shard directory::

    manifest.json            counts, classes, noise spec and realized rate, shards with sha256
    train-labels.parquet     per training sample: index, key, label (given), true_label
    train-00000.tar ...      samples: KEY.png, KEY.label.cls, KEY.true.cls (when known)
    meta-*.tar val-*.tar test-*.tar

The key of a training sample is its index ``0..N-1`` (its row in the soft-label
bank), zero-padded. Only whitelisted fields are decoded (PNG/JPEG images,
integer ``.cls`` labels, JSON): shard contents are never unpickled.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import webdataset as wds
from PIL import Image

from pipeline.errors import ShardError

FORMAT = "mslc-shards/1"
SPLITS = ("train", "meta", "val", "test")
IMAGE_EXTS = ("png", "jpg", "jpeg")
LABELS_FILE = "train-labels.parquet"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def encode_png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # reproducible bytes: same inputs, same sha256
    info.mode = 0o444
    tar.addfile(info, io.BytesIO(data))


def write_split(
    out_dir: Path,
    split: str,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    true_labels: np.ndarray | None,
    keys: list[str],
    shard_size: int,
) -> list[dict]:
    """Write one split as tar shards of ``shard_size`` samples; returns shard records.

    ``images`` (N, H, W[, 3]) uint8 are stored as PNG; ``labels`` (N,) int the given
    label; ``true_labels`` (N,) int or None; ``keys`` N unique strings without dots.
    """
    records = []
    for s, start in enumerate(range(0, len(labels), shard_size)):
        name = f"{split}-{s:05d}.tar"
        path = out_dir / name
        stop = min(start + shard_size, len(labels))
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(start, stop):
                k = keys[i]
                _add_member(tar, f"{k}.png", encode_png(images[i]))
                _add_member(tar, f"{k}.label.cls", str(int(labels[i])).encode())
                if true_labels is not None:
                    _add_member(tar, f"{k}.true.cls", str(int(true_labels[i])).encode())
        records.append(
            {"name": name, "count": stop - start, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
        )
    return records


def write_labels_table(
    path: Path, labels: np.ndarray, true_labels: np.ndarray | None, keys: list[str], source_index: np.ndarray
) -> dict:
    """The per-training-sample label table; returns its manifest record."""
    n = len(labels)
    true = (
        pa.array(np.asarray(true_labels, dtype=np.int64)) if true_labels is not None else pa.nulls(n, pa.int64())
    )
    table = pa.table(
        {
            "index": pa.array(np.arange(n, dtype=np.int64)),
            "key": pa.array(keys),
            "source_index": pa.array(np.asarray(source_index, dtype=np.int64)),
            "label": pa.array(np.asarray(labels, dtype=np.int64)),
            "true_label": true,
        }
    )
    pq.write_table(table, path)
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def publish_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written directory into place; an existing one is kept if complete."""
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp_dir, final_dir)
    except OSError:
        if (final_dir / "manifest.json").is_file():  # someone else finished first
            shutil.rmtree(tmp_dir, ignore_errors=True)
        else:
            raise


# ---------------------------------------------------------------- reading


def load_manifest(shard_dir: str | Path) -> dict:
    path = Path(shard_dir) / "manifest.json"
    if not path.is_file():
        raise ShardError(f"{path}: no manifest (shards not written yet?)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ShardError(f"{path}: not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise ShardError(f"{path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    for split in SPLITS:
        if split not in manifest.get("splits", {}):
            raise ShardError(f"{path}: no split {split!r}")
    return manifest


def _check_file(path: Path, record: dict, level: str) -> None:
    if not path.is_file():
        raise ShardError(f"{path}: listed in the manifest but missing")
    if level in ("size", "full") and path.stat().st_size != record["bytes"]:
        raise ShardError(
            f"{path}: {path.stat().st_size} bytes, the manifest says {record['bytes']} (truncated or replaced)"
        )
    if level == "full":
        digest = sha256_file(path)
        if digest != record["sha256"]:
            raise ShardError(f"{path}: sha256 mismatch: manifest {record['sha256']}, file {digest}")


def verify(shard_dir: str | Path, manifest: dict, *, level: str = "full") -> None:
    """Check every listed shard and the labels table exist (and match size / sha256)."""
    d = Path(shard_dir)
    if level == "none":
        return
    for split in SPLITS:
        for rec in manifest["splits"][split]["shards"]:
            _check_file(d / rec["name"], rec, level)
    _check_file(d / manifest["labels"]["name"], manifest["labels"], level)


def read_labels_table(shard_dir: str | Path, manifest: dict) -> dict[str, np.ndarray]:
    """Per training sample: ``label`` (N,) int64 given, ``true_label`` (N,) int64 or -1, ``key``."""
    path = Path(shard_dir) / manifest["labels"]["name"]
    try:
        t = pq.read_table(path).to_pydict()
    except Exception as e:
        raise ShardError(f"{path}: cannot read ({e})") from None
    n, c = manifest["splits"]["train"]["count"], manifest["num_classes"]
    if list(t.get("index", [])) != list(range(n)):
        raise ShardError(f"{path}: index column must be 0..{n - 1}")
    label = np.asarray(t["label"], dtype=np.int64)
    true = np.asarray([-1 if v is None else v for v in t["true_label"]], dtype=np.int64)
    for name, arr, lo in (("label", label, 0), ("true_label", true, -1)):
        bad = np.flatnonzero((arr < lo) | (arr >= c))
        if bad.size:
            i = int(bad[0])
            raise ShardError(f"{path}: sample {i} (key {t['key'][i]}): {name} {int(arr[i])} is outside 0..{c - 1}")
    return {"label": label, "true_label": true, "key": np.asarray(t["key"])}


def _reraise_with_shard(exn: Exception) -> bool:
    url = next((a for a in reversed(exn.args) if isinstance(a, str) and a.endswith(".tar")), None)
    where = f"shard {url}" if url else "a shard"
    raise ShardError(f"{where}: truncated or corrupt tar ({exn.args[0] if exn.args else exn})") from exn


def decode_image(data: bytes, *, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("L" if im.mode in ("L", "1", "P", "I;16") else "RGB"))
    except Exception as e:
        raise ShardError(f"{where}: cannot decode image ({e})") from None


def decode_label(data: bytes, *, where: str, num_classes: int) -> int:
    try:
        v = int(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise ShardError(f"{where}: label is not an integer ({data[:20]!r})") from None
    if not 0 <= v < num_classes:
        raise ShardError(f"{where}: label {v} is outside 0..{num_classes - 1}")
    return v


class Decoder:
    """Whitelisted decode of one raw WebDataset sample → ``(image (H, W[, 3]) uint8, label, index)``.

    ``index`` is the key as an integer: the bank row for train shards, the source index otherwise.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    def __call__(self, sample: dict) -> tuple[torch.Tensor, int, int]:
        key, url = sample["__key__"], sample.get("__url__", "?")
        where = f"shard {url}, sample {key}"
        img_field = next((e for e in IMAGE_EXTS if e in sample), None)
        if img_field is None or "label.cls" not in sample:
            raise ShardError(f"{where}: missing field {'image' if img_field is None else 'label.cls'}")
        img = decode_image(sample[img_field], where=where)
        label = decode_label(sample["label.cls"], where=where, num_classes=self.num_classes)
        return torch.from_numpy(img.copy()), label, sample_index(sample)


def sample_index(sample: dict) -> int:
    try:
        return int(sample["__key__"])
    except ValueError:
        raise ShardError(f"shard {sample.get('__url__', '?')}, sample {sample['__key__']}: "
                         "key is not a sample index") from None


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


def shard_urls(shard_dir: str | Path, manifest: dict, split: str) -> list[str]:
    return [str(Path(shard_dir) / r["name"]) for r in manifest["splits"][split]["shards"]]


def expected_counts(shard_dir: str | Path, manifest: dict, split: str, *, rank: int = 0, world: int = 1
                    ) -> dict[str, int]:
    """Samples each shard holds for ``rank`` of ``world`` (keys are ``0..N-1`` in shard order)."""
    out, start = {}, 0
    for r in manifest["splits"][split]["shards"]:
        stop = start + r["count"]
        first = start + (rank - start) % world
        out[str(Path(shard_dir) / r["name"])] = len(range(first, stop, world))
        start = stop
    return out


def stream(
    urls: list[str],
    *,
    num_classes: int,
    shuffle_seed: int | None,
    shuffle_buffer: int = 0,
    expected: dict[str, int] | None = None,
    rank: int = 0,
    world: int = 1,
) -> wds.WebDataset:
    """A WebDataset pipeline yielding ``(image, label, index)``.

    ``urls`` are local paths or URLs the webdataset library opens (``pipe:``,
    ``s3://`` through its handlers). With ``world > 1`` only samples whose index is
    ``rank`` modulo ``world`` are kept (before decoding), so ranks see disjoint,
    equal-sized parts. ``expected`` (per-url counts) turns on the count check. With
    ``shuffle_seed`` set, the shard order is permuted and samples pass a shuffle
    buffer, both seeded from it.
    """
    urls = list(urls)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(urls)
    ds = wds.WebDataset(
        urls,
        shardshuffle=False,
        nodesplitter=None,
        workersplitter=wds.split_by_worker,
        handler=_reraise_with_shard,
        empty_check=False,
    )
    if world > 1:
        ds = ds.select(lambda s: sample_index(s) % world == rank)
    if expected is not None:
        ds = ds.compose(count_check(expected))
    ds = ds.map(Decoder(num_classes))
    if shuffle_seed is not None and shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=shuffle_seed)
    return ds


def loader(ds, *, batch_size: int, workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, num_workers=workers, persistent_workers=False
    )


def load_split_tensors(shard_dir: str | Path, manifest: dict, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole (small) split in memory: ``(images (N, H, W[, 3]) uint8, labels (N,) int64)`` in index order."""
    ds = stream(shard_urls(shard_dir, manifest, split), num_classes=manifest["num_classes"], shuffle_seed=None,
                expected=expected_counts(shard_dir, manifest, split))
    xs, ys, idxs = [], [], []
    for x, y, idx in loader(ds, batch_size=512, workers=0):
        xs.append(x)
        ys.append(y)
        idxs.append(idx)
    if not xs:
        raise ShardError(f"{shard_dir}: split {split!r} is empty")
    order = torch.cat(idxs).argsort()
    return torch.cat(xs)[order], torch.cat(ys)[order]


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
