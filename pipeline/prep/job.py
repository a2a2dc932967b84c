"""The whole preparation job: read a release, check every input, plan, write the shards
resumably, publish. :func:`prepare` writes a given directory; :func:`ensure_shards` the
one a config reads, if it is missing."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.prep.fashion_mnist import ImageArrays
from pipeline.prep.listings import Bad, read_label_override
from pipeline.prep.plan import plan_splits
from pipeline.prep.readers import Items, Source, read_source
from pipeline.prep.writer import finish, plan_fingerprint, pool_map, shard_tasks, write_all
from pipeline.shardset.spec import PrepareOptions, prepared_with
from pipeline.storage import atomic_write_text, disk_full_named, exists, is_url, join

SCAN_CHUNK = 512


MAX_LISTED = 20


def stop_on_bad(bad: list[Bad], what: str) -> None:
    if not bad:
        return
    listed = "\n  ".join(str(b) for b in bad[:MAX_LISTED])
    more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
    raise PipelineError(
        f"{len(bad)} bad {what}:\n  {listed}{more}\n"
        "fix them, or rerun with --skip-bad (data.skip_bad=true) to leave them out"
    )


def check_image(path: str) -> tuple[str, str]:
    """``('', '')`` if the file exists and decodes completely, else ``(bad kind, reason)``."""
    from PIL import Image

    if not os.path.isfile(path):
        return "missing_image", "image file missing"
    try:
        with Image.open(path) as im:
            im.load()
    except Exception as e:
        return "corrupt_image", f"corrupt image ({type(e).__name__}: {e})"
    return "", ""


def check_images(paths: list[str]) -> list[tuple[str, str]]:
    return [check_image(p) for p in paths]


def scan_files(source: Source, *, workers: int, cache: Path | None, log) -> list[Bad]:
    """Check that every listed image exists and decodes; returns the bad ones.
    Results are cached in ``cache`` (keyed by the list of paths) for a resumed run."""
    paths = sorted(
        {
            p
            for items in (source.pool, source.clean, source.val, source.test)
            if items is not None and items.paths
            for p in items.paths
        }
    )
    if not paths:
        return []
    digest = hashlib.sha256("\n".join(paths).encode()).hexdigest()
    if cache is not None and cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("paths_sha256") == digest and all("kind" in b for b in saved["bad"]):
            log(f"image check: reusing the results for {len(paths)} files from {cache}")
            return [Bad(**b) for b in saved["bad"]]
    log(f"checking that {len(paths)} images exist and decode ({workers} process(es)) ...")
    chunks = [paths[i : i + SCAN_CHUNK] for i in range(0, len(paths), SCAN_CHUNK)]
    bad = []
    for chunk, reasons in zip(chunks, pool_map(check_images, chunks, workers)):
        bad += [Bad(p, "", why, None, kind) for p, (kind, why) in zip(chunk, reasons) if kind]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache, json.dumps({"paths_sha256": digest, "bad": [b.to_dict() for b in bad]}))
    return bad


def drop_paths(items: Items | None, bad_paths: set[str]) -> Items | None:
    if items is None or not items.paths or not bad_paths:
        return items
    keep = [i for i, p in enumerate(items.paths) if p not in bad_paths]
    return items.take(keep)


def partial_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def gather_bad(data: PrepareOptions, src: Source, partial: Path, log) -> tuple[Source, list[Bad], tuple | None]:
    """Every problem in the input, stopping unless ``data.skip_bad``; returns the source
    without the bad images, the bad list, and the parsed ``--labels`` override."""
    bad = list(src.bad)
    override = None
    if data.labels_file:
        known = {"key": set(src.pool.keys), "index": set(src.pool.source_index.tolist())}
        column, labels = read_label_override(Path(data.labels_file), src.classes, bad, known=known)
        override = (data.labels_file, column, labels)
    if not data.skip_bad:
        stop_on_bad(bad, "entries in the label files")
    scanned = scan_files(src, workers=data.prepare_workers, cache=partial / "scan.json", log=log)
    if not data.skip_bad:
        stop_on_bad(scanned, "images")
    bad_paths = {b.file for b in scanned}
    src = replace(src, **{k: drop_paths(getattr(src, k), bad_paths) for k in ("pool", "clean", "val", "test")})
    for b in bad + scanned:
        log(f"skipped: {b}")
    return src, bad + scanned, override


def pid_alive(pid: str) -> bool:
    """Whether ``pid`` (digits) is a live process on this machine."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def prepare(data: PrepareOptions, out: str | Path, *, raw: ImageArrays | None = None, log=print) -> Path:
    """Write the shard directory ``out`` for ``data``; returns it.

    An ``out`` that already holds shards prepared with the same options is kept as
    it is; one prepared with other options is an error (nothing is overwritten).
    """
    out = Path(out)
    ready = finished(data, out, raw, log)
    if ready is not None:
        return ready
    with disk_full_named(out.parent):
        out.parent.mkdir(parents=True, exist_ok=True)
    with writer_lock(out, log):
        ready = finished(data, out, raw, log)  # another writer may have finished while this one waited
        return ready if ready is not None else _prepare_locked(data, out, raw, log)


@contextlib.contextmanager
def writer_lock(out: Path, log):
    """Hold ``.OUT.lock`` beside ``out`` (an advisory ``flock``, released when this process
    ends, however it ends): a second writer of the same shards waits, saying for whom, and
    then finds them written. The file is removed once the shards are whole (only then: a
    waiter on a removed file re-checks under its lock and finds them)."""
    path = out.parent / f".{out.name}.lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            log(f"{out}: another process (pid {holder}) is writing these shards; waiting for it to finish ...")
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
            path.unlink(missing_ok=True)  # the shards are whole: a later writer takes a new lock file, finds them
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def finished(data: PrepareOptions, out: Path, raw: ImageArrays | None, log) -> Path | None:
    """``out`` when it already holds shards prepared with ``data``'s options; an error when
    it holds other shards or other files; None when there is nothing there yet."""
    if (out / "manifest.json").is_file():
        have = json.loads((out / "manifest.json").read_text()).get("prepared_with")
        if have is not None and raw is None and have != prepared_with(data):
            diff = sorted(k for k in have if have.get(k) != prepared_with(data).get(k))
            raise PipelineError(
                f"{out}: holds shards prepared with other options ({', '.join(diff)} differ); "
                "choose another --out or remove it"
            )
        log(f"{out}: already prepared")
        return out
    if out.exists() and any(out.iterdir()):
        raise PipelineError(f"{out}: exists, is not empty and holds no manifest.json; choose another --out")
    return None


def _prepare_locked(data: PrepareOptions, out: Path, raw: ImageArrays | None, log) -> Path:
    partial = partial_dir(out)
    partial.mkdir(parents=True, exist_ok=True)
    for stale in partial.glob(".*.tmp-*"):  # a file an interrupted run of this machine was writing
        if not pid_alive(stale.name.rsplit("-", 1)[-1]):
            stale.unlink(missing_ok=True)
    try:
        return _prepare_into(data, out, partial, raw, log)
    except BaseException:
        if partial.is_dir() and not any(partial.iterdir()):
            partial.rmdir()  # nothing was written: leave nothing behind
        raise


def _prepare_into(data: PrepareOptions, out: Path, partial: Path, raw: ImageArrays | None, log) -> Path:
    src, coarse = read_source(data, raw)
    src, bad, override = gather_bad(data, src, partial, log)
    plan = plan_splits(data, src, coarse, override)
    fp = plan_fingerprint(plan, data.shard_size)
    if (partial / "plan.json").is_file() and json.loads((partial / "plan.json").read_text())["plan_sha256"] != fp:
        log(f"{partial}: left by a run with other inputs; starting over")
        for p in partial.iterdir():
            if p.name != "scan.json":
                p.unlink()
    atomic_write_text(partial / "plan.json", json.dumps({"plan_sha256": fp}))
    log(f"writing shards for {out} ...")
    records = write_all(shard_tasks(plan, data.shard_size), partial, workers=data.prepare_workers, log=log)
    finish(data, plan, records, bad, fp, partial, out)
    log(summary_line(json.loads((out / "manifest.json").read_text())))
    return out


def summary_line(m: dict) -> str:
    s = m["splits"]
    rate = m["noise"]["realized_rate"]
    return (
        f"wrote {s['train']['count']} train / {s['meta']['count']} meta / {s['val']['count']} val / "
        f"{s['test']['count']} test samples; realized noise rate "
        f"{'unknown' if rate is None else f'{rate:.4f}'}; {m['bad']['skipped']} bad input(s) skipped"
    )


def ensure_shards(data: PrepareOptions, *, raw: ImageArrays | None = None, log=print) -> str:
    """The shard directory for ``data``, written first if it is missing.

    ``data.shards`` (an explicit directory or URL) is never written here: it must
    exist. ``raw`` replaces loading ``data.dataset`` (tests pass small fakes).
    """
    target = data.shard_dir()
    if exists(join(target, "manifest.json")):
        return target
    if data.shards or is_url(target):
        raise PipelineError(
            f"{target}: no manifest.json; write the shards first: "
            f"python pipeline/prepare.py {data.dataset} --raw RAW --out DIR"
        )
    return str(prepare(data, target, raw=raw, log=log))
