"""Files by local path or object-store URL (``s3://``, ``gs://``, ``az://``, any fsspec
protocol; ``s3fs`` / ``gcsfs`` / ``adlfs`` must be installed for those): existence, size,
reading, sha256, and atomic local writes. Shared by data preparation and training."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pipeline.errors import ShardError


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


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open_read(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
