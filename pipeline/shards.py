"""WebDataset shards: writing them with a manifest, verifying, and streaming them.

Layout of a shard directory::

    manifest.json            counts, classes, noise spec and realized rate, shards with sha256
    train-labels.parquet     per training sample: index, key, label (given), true_label
    train-00000.tar ...      samples: KEY.png or KEY.jpg, KEY.label.cls, KEY.true.cls (when known),
                             KEY.key.txt (the sample's key in the source: a file path or a row)
    meta-*.tar val-*.tar test-*.tar
    skipped.jsonl            bad input samples prepare skipped (--skip-bad), one JSON object each

The key of a training sample is its index ``0..N-1`` (its row in the soft-label
bank), zero-padded; of other splits its position. Only whitelisted fields are
decoded (PNG/JPEG images, integer ``.cls`` labels): shard contents are never
unpickled. A shard directory may be a local path or an object-store URL
(``s3://``, ``gs://``, ``az://``, any fsspec protocol; ``s3fs``/``gcsfs``/``adlfs``
must be installed for those).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import tarfile
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import webdataset as wds
from PIL import Image

from pipeline.errors import ShardError

FORMAT = "mslc-shards/1"
FSSPEC_SCHEMES = ("s3", "gs", "gcs", "az", "abfs", "memory", "file", "hf")
SPLITS = ("train", "meta", "val", "test")
IMAGE_EXTS = ("png", "jpg", "jpeg")
LABELS_FILE = "train-labels.parquet"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open_read(path) as f:
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


@dataclass
class ShardSample:
    """One sample to write: ``key`` the tar key; the image as an array (stored as PNG)
    or a file (JPEG and PNG bytes stored as they are, other formats as PNG);
    ``label`` given; ``true`` (-1 unknown); ``source_key`` its key in the source."""

    key: str
    label: int
    true: int
    source_key: str
    array: np.ndarray | None = None
    path: str | None = None


def image_member(s: ShardSample) -> tuple[str, bytes]:
    if s.array is not None:
        return "png", encode_png(s.array)
    data = Path(s.path).read_bytes()
    ext = Path(s.path).suffix.lower().lstrip(".")
    if ext in ("jpg", "jpeg"):
        return "jpg", data
    if ext == "png":
        return "png", data
    with Image.open(io.BytesIO(data)) as im:
        return "png", encode_png(np.asarray(im.convert("RGB")))


def write_shard(path: Path, samples: Iterable[ShardSample]) -> dict:
    """Write one tar shard atomically (a temporary file renamed into place); returns
    its record ``{name, count, bytes, sha256}``. Same inputs, same bytes."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    count = 0
    try:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for s in samples:
                ext, data = image_member(s)
                _add_member(tar, f"{s.key}.{ext}", data)
                _add_member(tar, f"{s.key}.label.cls", str(int(s.label)).encode())
                if s.true >= 0:
                    _add_member(tar, f"{s.key}.true.cls", str(int(s.true)).encode())
                _add_member(tar, f"{s.key}.key.txt", s.source_key.encode())
                count += 1
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"name": path.name, "count": count, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


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
    """Write arrays as one split of ``shard_size``-sample shards (PNG); returns shard records.

    ``images`` (N, H, W[, 3]) uint8; ``labels`` (N,) int given; ``true_labels`` (N,) or None;
    ``keys`` N unique strings without dots.
    """
    records = []
    for s, start in enumerate(range(0, len(labels), shard_size)):
        stop = min(start + shard_size, len(labels))
        samples = (ShardSample(keys[i], int(labels[i]), -1 if true_labels is None else int(true_labels[i]),
                               keys[i], array=images[i]) for i in range(start, stop))
        records.append(write_shard(out_dir / f"{split}-{s:05d}.tar", samples))
    return records


def write_labels_table(
    path: Path, labels: np.ndarray, true_labels: np.ndarray | None, keys: list[str], source_index: np.ndarray
) -> dict:
    """The per-training-sample label table; returns its manifest record."""
    n = len(labels)
    if true_labels is None:
        true = pa.nulls(n, pa.int64())
    else:  # -1 (unknown) is stored as null
        t = np.asarray(true_labels, dtype=np.int64)
        true = pa.array(t, mask=t < 0)
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


# ---------------------------------------------------------------- paths and URLs


def is_url(p: str | Path) -> bool:
    return "://" in str(p)


def join(base: str | Path, name: str) -> str:
    """``base/name`` for a local directory or a URL prefix."""
    return f"{str(base).rstrip('/')}/{name}" if is_url(base) else str(Path(base) / name)


def _fs(url: str):
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        raise ShardError(f"{url}: cannot open this URL ({e}); install the fsspec driver for it "
                         "(s3fs for s3://, gcsfs for gs://, adlfs for az://)") from None


def exists(p: str | Path) -> bool:
    if not is_url(p):
        return Path(p).is_file()
    fs, path = _fs(str(p))
    return fs.isfile(path)


def file_size(p: str | Path) -> int:
    if not is_url(p):
        return Path(p).stat().st_size
    fs, path = _fs(str(p))
    return int(fs.size(path))


def open_read(p: str | Path):
    """A binary file object for a local path or a URL."""
    if not is_url(p):
        return open(p, "rb")
    fs, path = _fs(str(p))
    return fs.open(path, "rb")


def _gopen_fsspec(url: str, mode: str = "rb", bufsize: int = 8192, **kw):
    if mode != "rb":
        raise ValueError(f"{url}: shards are opened read-only")
    return open_read(url)


def _register_url_handlers() -> None:
    """Object-store URLs stream through fsspec (webdataset's own ``gs`` handler shells out to gsutil)."""
    gopen = sys.modules["webdataset.gopen"]
    for scheme in FSSPEC_SCHEMES:
        gopen.gopen_schemes[scheme] = _gopen_fsspec


_register_url_handlers()


# ---------------------------------------------------------------- reading


def load_manifest(shard_dir: str | Path) -> dict:
    path = join(shard_dir, "manifest.json")
    if not exists(path):
        raise ShardError(f"{path}: no manifest (shards not written yet?)")
    try:
        with open_read(path) as f:
            manifest = json.loads(f.read().decode())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardError(f"{path}: not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise ShardError(f"{path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    for split in SPLITS:
        if split not in manifest.get("splits", {}):
            raise ShardError(f"{path}: no split {split!r}")
    return manifest


def _check_file(path: str, record: dict, level: str) -> None:
    if not exists(path):
        raise ShardError(f"{path}: listed in the manifest but missing")
    size = file_size(path)
    if level in ("size", "full") and size != record["bytes"]:
        raise ShardError(f"{path}: {size} bytes, the manifest says {record['bytes']} (truncated or replaced)")
    if level == "full":
        digest = sha256_file(path)
        if digest != record["sha256"]:
            raise ShardError(f"{path}: sha256 mismatch: manifest {record['sha256']}, file {digest}")


def verify(shard_dir: str | Path, manifest: dict, *, level: str = "full") -> None:
    """Check every listed shard and the labels table exist (and match size / sha256)."""
    if level == "none":
        return
    for split in SPLITS:
        for rec in manifest["splits"][split]["shards"]:
            _check_file(join(shard_dir, rec["name"]), rec, level)
    _check_file(join(shard_dir, manifest["labels"]["name"]), manifest["labels"], level)


def read_labels_table(shard_dir: str | Path, manifest: dict) -> dict[str, np.ndarray]:
    """Per training sample: ``label`` (N,) int64 given, ``true_label`` (N,) int64 or -1, ``key``."""
    path = join(shard_dir, manifest["labels"]["name"])
    try:
        if is_url(path):
            with open_read(path) as f:
                t = pq.read_table(io.BytesIO(f.read())).to_pydict()
        else:
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


def decode_image(data: bytes, *, where: str, channels: int = 0) -> np.ndarray:
    """Image bytes → ``(H, W)`` (grayscale) or ``(H, W, 3)`` uint8; ``channels`` 1 or 3 forces the mode."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            mode = {1: "L", 3: "RGB"}.get(channels) or ("L" if im.mode in ("L", "1", "P", "I;16") else "RGB")
            return np.asarray(im.convert(mode))
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
    """Whitelisted decode of one raw WebDataset sample → ``(image (C, H, W) uint8, label, index)``.

    ``index`` is the key as an integer: the bank row for train shards, the position
    otherwise. ``transform`` (uint8 CHW → uint8 CHW, e.g. random crop) runs last.
    """

    def __init__(self, num_classes: int, *, channels: int = 0, transform: Callable | None = None) -> None:
        self.num_classes, self.channels, self.transform = num_classes, channels, transform

    def __call__(self, sample: dict) -> tuple[torch.Tensor, int, int]:
        key, url = sample["__key__"], sample.get("__url__", "?")
        where = f"shard {url}, sample {key}"
        img_field = next((e for e in IMAGE_EXTS if e in sample), None)
        if img_field is None or "label.cls" not in sample:
            raise ShardError(f"{where}: missing field {'image' if img_field is None else 'label.cls'}")
        img = decode_image(sample[img_field], where=where, channels=self.channels)
        label = decode_label(sample["label.cls"], where=where, num_classes=self.num_classes)
        x = torch.from_numpy(img.copy())
        x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1).contiguous()
        if self.transform is not None:
            x = self.transform(x)
        return x, label, sample_index(sample)


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


def decode_stage(decoder: Decoder, bad_samples: str):
    """Decode every sample; with ``bad_samples='skip'`` one that fails is reported on
    stderr and left out (its bank row keeps its previous soft label this epoch)."""

    def stage(samples):
        for s in samples:
            try:
                yield decoder(s)
            except ShardError as e:
                if bad_samples != "skip":
                    raise
                print(f"warning: skipping a bad sample: {e}", file=sys.stderr, flush=True)

    return stage


def shard_urls(shard_dir: str | Path, manifest: dict, split: str) -> list[str]:
    return [join(shard_dir, r["name"]) for r in manifest["splits"][split]["shards"]]


def expected_counts(shard_dir: str | Path, manifest: dict, split: str, *, rank: int = 0, world: int = 1
                    ) -> dict[str, int]:
    """Samples each shard holds for ``rank`` of ``world`` (keys are ``0..N-1`` in shard order)."""
    out, start = {}, 0
    for r in manifest["splits"][split]["shards"]:
        stop = start + r["count"]
        first = start + (rank - start) % world
        out[join(shard_dir, r["name"])] = len(range(first, stop, world))
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
    channels: int = 0,
    transform: Callable | None = None,
    bad_samples: str = "error",
) -> wds.WebDataset:
    """A WebDataset pipeline yielding ``(image (C, H, W) uint8, label, index)``.

    ``urls`` are local paths or URLs (``s3://``, ``gs://`` … through fsspec; ``pipe:``,
    ``http(s)://`` through webdataset). With ``world > 1`` only samples whose index is
    ``rank`` modulo ``world`` are kept (before decoding), so ranks see disjoint,
    equal-sized parts. ``expected`` (per-url counts) turns on the count check. With
    ``shuffle_seed`` set, the shard order is permuted and the undecoded samples pass
    a shuffle buffer, both seeded from it. ``transform`` runs on each decoded image.
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
    if shuffle_seed is not None and shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=shuffle_seed)
    return ds.compose(decode_stage(Decoder(num_classes, channels=channels, transform=transform), bad_samples))


def loader(ds, *, batch_size: int, workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, num_workers=workers, persistent_workers=False
    )


def load_split_tensors(shard_dir: str | Path, manifest: dict, split: str, *, transform: Callable | None = None,
                       channels: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole (small) split in memory: ``(images (N, C, H, W) uint8, labels (N,) int64)`` in index order."""
    ds = stream(shard_urls(shard_dir, manifest, split), num_classes=manifest["num_classes"], shuffle_seed=None,
                expected=expected_counts(shard_dir, manifest, split), channels=channels, transform=transform)
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
