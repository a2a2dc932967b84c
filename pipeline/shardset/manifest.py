"""A shard directory: the contract between data preparation (which writes it) and training
(which verifies and streams it).

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
unpickled. A shard directory may be a local path or an object-store URL (see
:mod:`pipeline.storage`). This module reads what every shard directory has: its
manifest, the per-sample label table, and each split's shards and their counts.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipeline.errors import ShardError
from pipeline.storage import exists, file_size, is_url, join, open_read, sha256_file

FORMAT = "mslc-shards/1"


SPLITS = ("train", "meta", "val", "test")


IMAGE_EXTS = ("png", "jpg", "jpeg")


LABELS_FILE = "train-labels.parquet"


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
        for rec in manifest["splits"][split].get("shards", []):
            name = rec.get("name") if isinstance(rec, dict) else None
            if not isinstance(name, str) or not re.fullmatch(rf"{split}-\d{{5,}}\.tar", name):
                raise ShardError(
                    f"{path}: split {split!r} names the shard {name!r}; shard names must be plain "
                    f"file names such as {split}-00000.tar, inside the shard directory"
                )
    check_counts(path, manifest)
    labels = manifest.get("labels", {}).get("name") if isinstance(manifest.get("labels"), dict) else None
    if labels != LABELS_FILE:
        raise ShardError(
            f"{path}: the label table is named {labels!r}; it must be {LABELS_FILE!r}, inside the shard directory"
        )
    return manifest


def _count(v) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def check_counts(path: str, manifest: dict) -> None:
    """The manifest's numbers, before anything is streamed: class count and names, and per
    split a count ≥ 0 that its shards' counts (each ≥ 0, with a size and a sha256) add up to.
    The training keys ``0..N-1`` run through the shards in order, so the counts fix each
    shard's key range."""
    c = manifest.get("num_classes")
    if _count(c) is None or c < 2:
        raise ShardError(f"{path}: num_classes is {c!r}; it must be an integer >= 2")
    classes = manifest.get("classes")
    if not isinstance(classes, list) or len(classes) != c:
        raise ShardError(
            f"{path}: classes must list {c} names (num_classes), got "
            f"{len(classes) if isinstance(classes, list) else repr(classes)}"
        )
    for split in SPLITS:
        rec = manifest["splits"][split]
        total = _count(rec.get("count"))
        if total is None:
            raise ShardError(f"{path}: split {split!r} has count {rec.get('count')!r}; it must be an integer >= 0")
        shards = rec.get("shards")
        if not isinstance(shards, list):
            raise ShardError(f"{path}: split {split!r} has no list of shards")
        added = 0
        for r in shards:
            n = _count(r.get("count"))
            if n is None or _count(r.get("bytes")) is None or not re.fullmatch(r"[0-9a-f]{64}", str(r.get("sha256"))):
                raise ShardError(
                    f"{path}: split {split!r}, shard {r['name']}: count {r.get('count')!r}, bytes "
                    f"{r.get('bytes')!r} and sha256 must be integers >= 0 and a hex digest"
                )
            added += n
        if added != total:
            raise ShardError(f"{path}: split {split!r} counts {total} samples but its shards' counts add up to {added}")
    if manifest["splits"]["train"]["count"] == 0:
        raise ShardError(f"{path}: the training split is empty")


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


def shard_urls(shard_dir: str | Path, manifest: dict, split: str) -> list[str]:
    return [join(shard_dir, r["name"]) for r in manifest["splits"][split]["shards"]]


def expected_counts(shard_dir: str | Path, manifest: dict, split: str) -> dict[str, int]:
    """Samples each shard of ``split`` holds, by url."""
    return {join(shard_dir, r["name"]): r["count"] for r in manifest["splits"][split]["shards"]}
