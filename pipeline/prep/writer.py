"""Writing a shard directory: tar shards (reproducible bytes), the label table, and the
manifest; resumably, in several processes, published by one rename when complete."""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import shutil
import signal
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.prep.listings import Bad
from pipeline.prep.plan import Plan
from pipeline.shardset import FORMAT, LABELS_FILE
from pipeline.shardset.spec import PrepareOptions, prepared_with
from pipeline.storage import atomic_path, atomic_write_text, sha256_file


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
    count = 0
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            ext, data = image_member(s)
            _add_member(tar, f"{s.key}.{ext}", data)
            _add_member(tar, f"{s.key}.label.cls", str(int(s.label)).encode())
            if s.true >= 0:
                _add_member(tar, f"{s.key}.true.cls", str(int(s.true)).encode())
            _add_member(tar, f"{s.key}.key.txt", s.source_key.encode())
            count += 1
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
        samples = (
            ShardSample(
                keys[i], int(labels[i]), -1 if true_labels is None else int(true_labels[i]), keys[i], array=images[i]
            )
            for i in range(start, stop)
        )
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
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


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


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


POOL_GRACE_S = 5.0  # a stopped pool's processes may finish the shard they are writing for this long


def stop_pool(ex: ProcessPoolExecutor) -> None:
    """Stop a pool after Ctrl-C or SIGTERM: no new task starts; each process may finish the
    shard it is writing for :data:`POOL_GRACE_S` (killed mid-write, one can leave
    multiprocessing's resource tracker a torn message, which it prints as a traceback),
    then the ones still running are terminated."""
    procs = list((getattr(ex, "_processes", None) or {}).values())
    ex.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + POOL_GRACE_S
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    queue = getattr(ex, "_call_queue", None)
    if queue is not None:  # its feeder may be blocked on a pipe nobody reads now: do not wait for it at exit
        queue.cancel_join_thread()


def pool_map(fn, chunks: list, workers: int):
    """``fn`` over ``chunks`` in order, in ``workers`` processes (in this one when 1).

    The worker processes start with SIGINT ignored, so a Ctrl-C (sent to the whole process
    group) reaches this process alone: it stops them and re-raises, with no traceback
    from each of them and no wait on work already queued.
    """
    if workers <= 1 or len(chunks) <= 1:
        yield from map(fn, chunks)
        return
    ctx = multiprocessing.get_context("spawn")
    ex = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        futures = [ex.submit(fn, c) for c in chunks]  # the processes start here, inheriting SIG_IGN
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
    try:
        for f in futures:  # not Executor.map: its clean-up cancels futures the broken pool then fails to set
            yield f.result()
    except BaseException:
        stop_pool(ex)
        raise
    ex.shutdown()


@dataclass
class ShardTask:
    name: str
    samples: list[ShardSample]


def shard_tasks(plan: Plan, shard_size: int) -> dict[str, list[ShardTask]]:
    """Per split, its shards; sample keys are positions (the bank row for train)."""
    out = {}
    for split, items in plan.splits.items():
        tasks = []
        for s, start in enumerate(range(0, len(items), shard_size)):
            samples = []
            for i in range(start, min(start + shard_size, len(items))):
                true = int(items.true[i]) if split == "train" else int(items.labels[i])
                samples.append(
                    ShardSample(
                        key=f"{i:08d}",
                        label=int(items.labels[i]),
                        true=true,
                        source_key=items.keys[i],
                        array=None if items.images is None else items.images[i],
                        path=None if items.paths is None else items.paths[i],
                    )
                )
            tasks.append(ShardTask(f"{split}-{s:05d}.tar", samples))
        out[split] = tasks
    return out


def plan_fingerprint(plan: Plan, shard_size: int) -> str:
    h = hashlib.sha256(f"{FORMAT}|{shard_size}|{plan.classes}".encode())
    for split, it in plan.splits.items():
        h.update(split.encode())
        h.update("\n".join(it.keys).encode())
        h.update(it.labels.tobytes() + it.true.tobytes())
        if it.images is not None:
            h.update(np.ascontiguousarray(it.images).tobytes())
        if it.paths is not None:
            h.update("\n".join(it.paths).encode())
    return h.hexdigest()


def write_task(job: tuple[str, ShardTask]) -> dict:
    directory, task = job
    return write_shard(Path(directory) / task.name, task.samples)


def completed(partial: Path, name: str) -> dict | None:
    """The record of a shard already written and verified in ``partial``, else None."""
    side, path = partial / f"{name}.json", partial / name
    if not (side.is_file() and path.is_file()):
        return None
    rec = json.loads(side.read_text())
    if path.stat().st_size != rec["bytes"] or sha256_file(path) != rec["sha256"]:
        return None
    return rec


def write_all(tasks: dict[str, list[ShardTask]], partial: Path, *, workers: int, log) -> dict[str, list[dict]]:
    """Write every shard not already complete in ``partial``; each finished shard gets
    a ``NAME.json`` record beside it, so an interrupted run resumes where it stopped."""
    records = {t.name: completed(partial, t.name) for ts in tasks.values() for t in ts}
    todo = [t for ts in tasks.values() for t in ts if records[t.name] is None]
    done = len(records) - len(todo)
    log(f"{len(records)} shards: {done} already complete, writing {len(todo)} ({workers} process(es)) ...")
    for task, rec in zip(todo, pool_map(write_task, [(str(partial), t) for t in todo], workers)):
        atomic_write_text(partial / f"{task.name}.json", json.dumps(rec))
        records[task.name] = rec
    return {split: [records[t.name] for t in ts] for split, ts in tasks.items()}


def bad_summary(bad: list[Bad]) -> dict:
    """The manifest's record of skipped input: how many, by kind, and the file listing them."""
    return {"skipped": len(bad), "by_reason": dict(Counter(b.kind for b in bad)), "file": "skipped.jsonl"}


def build_manifest(data: PrepareOptions, plan: Plan, records: dict, labels: dict, bad: list[Bad], fp: str) -> dict:
    return {
        "format": FORMAT,
        "created": now(),
        "dataset": data.dataset,
        "num_classes": len(plan.classes),
        "classes": list(plan.classes),
        "image": {**plan.image, "mean": list(plan.image["mean"]), "std": list(plan.image["std"])},
        "noise": plan.noise,
        "split_seed": data.split_seed,
        **plan.info,
        "splits": {k: {"count": sum(r["count"] for r in v), "shards": v} for k, v in records.items()},
        "labels": labels,
        "bad": bad_summary(bad),
        "prepared_with": prepared_with(data),
        "plan_sha256": fp,
    }


def finish(data: PrepareOptions, plan: Plan, records: dict, bad: list[Bad], fp: str, partial: Path, out: Path) -> None:
    """Labels table, skipped list and manifest (last), then the rename into place."""
    train = plan.splits["train"]
    labels = write_labels_table(partial / LABELS_FILE, train.labels, train.true, train.keys, train.source_index)
    atomic_write_text(partial / "skipped.jsonl", "".join(json.dumps(b.to_dict()) + "\n" for b in bad))
    for p in list(partial.iterdir()):
        if p.suffix == ".json" and p.name != "manifest.json":
            p.unlink()
    manifest = build_manifest(data, plan, records, labels, bad, fp)
    atomic_write_text(partial / "manifest.json", json.dumps(manifest, indent=1))
    publish_dir(partial, out)
