"""One shard sample's bytes, read safely: opening a shard (local path, object-store URL or
http), the whitelisted decoders (PNG/JPEG images, integer ``.cls`` labels; nothing is
unpickled), and the field checks every reader of shards applies — training's stream and the
review page alike. Messages name the shard and the sample's key."""

from __future__ import annotations

import io
import sys

import numpy as np
from PIL import Image

from pipeline.errors import LabelMismatchError, ShardError
from pipeline.shardset.manifest import IMAGE_EXTS, LABELS_FILE
from pipeline.storage import open_read


def open_shard(url: str):
    """A shard's byte stream. A local path is opened as it is (``#``, spaces and braces are
    legal in file names, not URL syntax); an object-store URL through fsspec; only
    ``http(s)://`` goes through webdataset's opener."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme in ("http", "https"):
        return sys.modules["webdataset.gopen"].gopen(url)
    if scheme:
        return open_read(url)
    return open(url, "rb", buffering=1 << 16)


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


def checked_fields(sample: dict) -> tuple[str, str]:
    """``(where, image field)`` of a raw shard sample: ``where`` names its shard and key for
    messages; a sample without an image or a ``label.cls`` field raises ShardError."""
    where = f"shard {sample.get('__url__', '?')}, sample {sample['__key__']}"
    img_field = next((e for e in IMAGE_EXTS if e in sample), None)
    if img_field is None or "label.cls" not in sample:
        raise ShardError(f"{where}: missing field {'image' if img_field is None else 'label.cls'}")
    return where, img_field


def checked_label(sample: dict, where: str, *, num_classes: int, table: np.ndarray | None) -> tuple[int, int]:
    """``(label, index)`` of a raw sample. With ``table`` ((N,) int64, the label table's given
    labels by index) the shard's ``.cls`` must agree with it: the table is the one source of
    the given labels (training, the exported ``given_label`` and the metrics all read it), so
    a shard that disagrees was written by another preparation and is refused
    (:class:`LabelMismatchError`, never skipped)."""
    label = decode_label(sample["label.cls"], where=where, num_classes=num_classes)
    index = sample_index(sample)
    if table is not None:
        if not 0 <= index < len(table):
            raise LabelMismatchError(
                f"{where}: key {index} is not a row of {LABELS_FILE} (0..{len(table) - 1}): the "
                "shards and the label table come from different preparations; rerun "
                "pipeline/prepare.py"
            )
        if label != table[index]:
            raise LabelMismatchError(
                f"{where}: label {label} in the shard, {int(table[index])} in {LABELS_FILE}: the "
                "shards and the label table disagree (edited, or from different preparations); "
                "rerun pipeline/prepare.py"
            )
    return label, index


def sample_index(sample: dict) -> int:
    try:
        return int(sample["__key__"])
    except ValueError:
        raise ShardError(
            f"shard {sample.get('__url__', '?')}, sample {sample['__key__']}: key is not a sample index"
        ) from None
