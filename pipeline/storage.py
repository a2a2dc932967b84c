"""Files by local path or object-store URL (``s3://``, ``gs://``, ``az://``, any fsspec
protocol; ``s3fs`` / ``gcsfs`` / ``adlfs`` must be installed for those): existence, size,
reading, sha256, and atomic local writes. Shared by data preparation and training."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
from pathlib import Path

from pipeline.errors import DiskFullError, ShardError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


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
        raise ShardError(
            f"{url}: cannot open this URL ({e}); install the fsspec driver for it "
            "(s3fs for s3://, gcsfs for gs://, adlfs for az://)"
        ) from None


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


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the file system of ``path`` (or of its nearest existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def disk_full_error(path: str | Path, *, written: int | None = None) -> DiskFullError:
    """The one line a full disk gets: the path, what was written before it filled, what is free."""
    free = free_bytes(path)
    need = f"it needs more than {written:,} bytes, " if written else ""
    return DiskFullError(
        f"{path}: no space left on device ({need}{'?' if free is None else f'{free:,}'} bytes "
        "are free there): free some space or choose another path, then rerun (what was "
        "complete is kept)"
    )


def disk_full_in(e: BaseException) -> bool:
    """Whether a full disk (``ENOSPC`` / ``EDQUOT``) is behind ``e`` (its causes and contexts)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in NO_SPACE:
            return True
        e = e.__cause__ or e.__context__
    return False


@contextlib.contextmanager
def disk_full_named(path: str | Path):
    """Turn an ``ENOSPC`` / ``EDQUOT`` inside the block into :class:`DiskFullError` naming ``path``."""
    try:
        yield
    except Exception as e:
        if disk_full_in(e):
            raise disk_full_error(path) from None
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; when the block ends without error it is
    renamed to ``path``, so ``path`` is either its old self or complete. On any error the
    temporary file is removed; a full disk becomes :class:`DiskFullError` naming ``path``.
    Write through Python file objects (``torch.save`` to a *path* reports a full disk as a
    generic RuntimeError)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        written = tmp.stat().st_size if tmp.exists() else 0
        with contextlib.suppress(OSError):
            tmp.unlink()
        if disk_full_in(e):  # torch.save's writer turns it into a RuntimeError with the OSError as context
            raise disk_full_error(path, written=written) from None
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj, path: str | Path) -> None:
    """``torch.save`` to ``path``, whole or not at all."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
