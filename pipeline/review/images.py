"""Training images by sample index, read from only the shards that hold them; thumbnails
and a captioned grid of them.

Training shards hold ascending, contiguous sample indices in manifest order, so the shard
of index ``i`` follows from the manifest's counts, and a shard is read from its start up
to the last wanted sample only. Only the wanted images are kept (as thumbnails), so the
memory a review needs is bounded by the number of images it shows, whatever the data set's size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from pipeline.errors import PipelineError
from pipeline.shardset import shard_urls
from pipeline.shardset.samples import checked_fields, decode_image, open_shard
from pipeline.shardset.tar import tar_samples

THUMB = 128  # the longest side of a thumbnail, in pixels


def shard_starts(manifest: dict) -> np.ndarray:
    """(S + 1,) int64: the first sample index of each training shard, and N last."""
    counts = [r["count"] for r in manifest["splits"]["train"]["shards"]]
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def shard_of(indices: np.ndarray, manifest: dict) -> np.ndarray:
    """(n,) int64: the training shard (its position in the manifest) holding each index."""
    starts = shard_starts(manifest)
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= starts[-1]):
        raise PipelineError(f"sample index outside 0..{starts[-1] - 1} of the training shards")
    return np.searchsorted(starts, idx, side="right") - 1


def thumbnail(img: np.ndarray, size: int = THUMB) -> Image.Image:
    """An ``(H, W)`` or ``(H, W, 3)`` uint8 image as an RGB PIL image whose longest side is
    at most ``size`` (small images keep their pixels: the page scales them up sharply)."""
    im = Image.fromarray(img).convert("RGB")
    im.thumbnail((size, size), Image.Resampling.LANCZOS)
    return im


def placeholder(size: int = 64) -> Image.Image:
    """A grey tile with a cross: an image that could not be decoded."""
    im = Image.new("RGB", (size, size), (200, 200, 200))
    d = ImageDraw.Draw(im)
    d.line((0, 0, size, size), fill=(120, 120, 120), width=2)
    d.line((0, size, size, 0), fill=(120, 120, 120), width=2)
    return im


def read_thumbnails(shard_dir: str, manifest: dict, indices, *, size: int = THUMB) -> tuple[dict, dict]:
    """Thumbnails of training samples ``indices``, reading only the shards that hold them.

    Returns ``(thumbs, errors)``: ``{index: PIL image}`` and ``{index: message}`` for an
    image that is missing or cannot be decoded (its message names the shard and sample).
    A shard that is missing, truncated or corrupt raises :class:`~pipeline.errors.ShardError`.
    """
    wanted = np.unique(np.asarray(list(indices), dtype=np.int64))
    urls, starts = shard_urls(shard_dir, manifest, "train"), shard_starts(manifest)
    channels = manifest["image"]["channels"]
    thumbs, errors = {}, {}
    for s in np.unique(shard_of(wanted, manifest)):
        mine = wanted[(wanted >= starts[s]) & (wanted < starts[s + 1])]
        source = {"url": urls[s], "first": int(mine[0]), "stop": int(mine[-1]) + 1}
        keep = set(mine.tolist())
        for sample in tar_samples([source], open_shard):
            i = int(sample["__key__"])
            if i not in keep:
                continue
            try:
                where, ext = checked_fields(sample)
                thumbs[i] = thumbnail(decode_image(sample[ext], where=where, channels=channels), size)
            except PipelineError as e:
                errors[i] = str(e)
    return thumbs, errors


def captioned_grid(tiles: list[Image.Image], captions: list[str], *, cols: int = 8, size: int = 96) -> np.ndarray:
    """Tiles (each scaled to ``size``×``size``) with a line of text under each, ``cols`` per
    row, as an ``(H, W, 3)`` uint8 array (a TensorBoard image)."""
    if not tiles:
        raise ValueError("captioned_grid needs at least one tile")
    line = 12
    rows = -(-len(tiles) // cols)
    sheet = Image.new("RGB", (cols * (size + 4), rows * (size + line + 6)), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    for n, (tile, text) in enumerate(zip(tiles, captions)):
        r, c = divmod(n, cols)
        x, y = c * (size + 4) + 2, r * (size + line + 6) + 2
        sheet.paste(tile.resize((size, size), Image.Resampling.NEAREST), (x, y))
        d.text((x, y + size + 1), text[: size // 6], fill=(0, 0, 0))
    return np.asarray(sheet)
