"""Turn a raw data set into noisy-label WebDataset shards, once.

    python pipeline/prepare.py KIND --out DIR [--raw PATH] [options]
    python pipeline/prepare.py [--config PRESET_OR_FILE] [key=value ...]

KIND is one of fashion-mnist, cifar10, cifar100, clothing1m, folder; its defaults
are those of the matching preset (fmnist-sym40, cifar10-sym40, cifar100-sym40,
clothing1m, folder). The second form writes ``data.shard_root/<spec name>/`` for
a config, the place ``pipeline/train.py`` reads when ``data.shards`` is unset.

What ``--raw`` is, per kind:
  fashion-mnist  a directory with FashionMNIST/raw/ (else the Debian package's files)
  cifar10        cifar-10-python.tar.gz, or a directory holding it
  cifar100       cifar-100-python.tar.gz, or a directory holding it
  clothing1m     the release root: images/ and the seven *.txt files
  folder         an image tree ROOT/CLASS/.../IMAGE, or a CSV/Parquet listing (path,label)

Writing is resumable: shards go to DIR's sibling ``.DIR.partial/``; complete,
verified shards found there are kept; the directory is renamed to DIR only when
everything, manifest last, is written. Bad input (a corrupt or missing image, a
key with two labels, a label out of range, an unparsable line) is listed with its
file, line and key; the run stops, or with --skip-bad leaves it out and counts it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mslc.noise import CIFAR10_ASYM, FMNIST_ASYM, corrupt, make_transition, realized_matrix, superclass_next_map
from mslc.splits import balanced_split
from pipeline import shards, sources
from pipeline.config import DataConfig
from pipeline.datasets import ImageArrays, load_fashion_mnist
from pipeline.errors import PipelineError
from pipeline.sources import Bad, Items, Source

KINDS = ("fashion-mnist", "cifar10", "cifar100", "clothing1m", "folder")
KIND_PRESETS = {"fashion-mnist": "fmnist-sym40", "cifar10": "cifar10-sym40", "cifar100": "cifar100-sym40",
                "clothing1m": "clothing1m", "folder": "folder"}
SCAN_CHUNK = 512
MAX_LISTED = 20


@dataclass
class Plan:
    """The four splits as they will be written, and what the manifest says of them."""

    splits: dict[str, Items]
    classes: tuple[str, ...]
    image: dict
    noise: dict
    info: dict


# ------------------------------------------------------------------ reading


def read_source(data: DataConfig, raw: ImageArrays | None = None) -> tuple[Source, np.ndarray | None]:
    """The raw data set as a :class:`Source`, and CIFAR-100's coarse labels of the pool."""
    root = Path(data.raw_dir)
    if raw is not None or data.dataset == "fashion-mnist":
        a = raw if raw is not None else load_fashion_mnist(root)
        h, w = a.train_x.shape[1:3]
        image = {"channels": 1 if a.train_x.ndim == 3 else 3, "height": int(h), "width": int(w),
                 "mean": list(a.mean), "std": list(a.std)}
        return Source(classes=tuple(a.classes), image=image, pool=sources.array_items(a.train_x, a.train_y),
                      test=sources.array_items(a.test_x, a.test_y)), None
    if data.dataset in ("cifar10", "cifar100"):
        return sources.read_cifar(root, data.dataset)
    if data.dataset == "clothing1m":
        return sources.read_clothing1m(root), None
    return sources.read_folder(root, clean_list=data.clean_list, test_list=data.test_list), None


def stop_on_bad(bad: list[Bad], what: str) -> None:
    if not bad:
        return
    listed = "\n  ".join(str(b) for b in bad[:MAX_LISTED])
    more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
    raise PipelineError(f"{len(bad)} bad {what}:\n  {listed}{more}\n"
                        "fix them, or rerun with --skip-bad (data.skip_bad=true) to leave them out")


def check_image(path: str) -> str:
    """'' if the file exists and decodes completely, else why not."""
    from PIL import Image

    if not os.path.isfile(path):
        return "image file missing"
    try:
        with Image.open(path) as im:
            im.load()
    except Exception as e:
        return f"corrupt image ({type(e).__name__}: {e})"
    return ""


def check_images(paths: list[str]) -> list[str]:
    return [check_image(p) for p in paths]


def pool_map(fn, chunks: list, workers: int):
    """``fn`` over ``chunks`` in order, in ``workers`` processes (in this one when 1)."""
    if workers <= 1 or len(chunks) <= 1:
        yield from map(fn, chunks)
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
        yield from ex.map(fn, chunks)


def scan_files(source: Source, *, workers: int, cache: Path | None, log) -> list[Bad]:
    """Check that every listed image exists and decodes; returns the bad ones.
    Results are cached in ``cache`` (keyed by the list of paths) for a resumed run."""
    paths = sorted({p for items in (source.pool, source.clean, source.val, source.test)
                    if items is not None and items.paths for p in items.paths})
    if not paths:
        return []
    digest = hashlib.sha256("\n".join(paths).encode()).hexdigest()
    if cache is not None and cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("paths_sha256") == digest:
            log(f"image check: reusing the results for {len(paths)} files from {cache}")
            return [Bad(**b) for b in saved["bad"]]
    log(f"checking that {len(paths)} images exist and decode ({workers} process(es)) ...")
    chunks = [paths[i : i + SCAN_CHUNK] for i in range(0, len(paths), SCAN_CHUNK)]
    bad = []
    for chunk, reasons in zip(chunks, pool_map(check_images, chunks, workers)):
        bad += [Bad(p, "", r) for p, r in zip(chunk, reasons) if r]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        shards.atomic_write_text(cache, json.dumps({"paths_sha256": digest, "bad": [b.to_dict() for b in bad]}))
    return bad


def drop_paths(items: Items | None, bad_paths: set[str]) -> Items | None:
    if items is None or not items.paths or not bad_paths:
        return items
    keep = [i for i, p in enumerate(items.paths) if p not in bad_paths]
    return items.take(keep)


# ------------------------------------------------------------------ planning


def subsample(idx: np.ndarray, n: int, seed: int) -> np.ndarray:
    if not n or n >= len(idx):
        return idx
    return np.sort(np.random.default_rng(seed).choice(idx, size=n, replace=False))


def noise_mapping(data: DataConfig, coarse: np.ndarray | None, pool: Items) -> dict[int, int] | None:
    if data.noise != "asym":
        return None
    if data.dataset == "cifar100":
        return superclass_next_map(pool.true, coarse)
    maps = {"fashion-mnist": FMNIST_ASYM, "cifar10": CIFAR10_ASYM}
    if data.dataset in maps:
        return maps[data.dataset]
    raise PipelineError(f"no asymmetric noise map for dataset {data.dataset!r}")


def balanced(labels: np.ndarray, *, n_meta: int, n_val: int, seed: int, what: str):
    try:
        return balanced_split(labels, n_meta=n_meta, n_val=n_val, seed=seed)
    except ValueError as e:
        raise PipelineError(f"{what}: cannot draw {n_meta} meta and {n_val} validation samples ({e})") from None


def draw_clean_splits(data: DataConfig, src: Source) -> tuple[Items, Items, Items]:
    """(train pool, meta, val): meta and val are class-balanced and disjoint from train."""
    s = data.split_seed
    if src.clean is None:  # drawn from the pool by its true (else given) labels
        ref = src.pool.true if (src.pool.true >= 0).all() else src.pool.labels
        sp = balanced(ref, n_meta=data.n_meta, n_val=0 if src.val is not None else data.n_val, seed=s,
                      what="training pool")
        meta, val = src.pool.take(sp.meta), src.pool.take(sp.val) if src.val is None else src.val
        pool = src.pool.take(sp.train)
    else:
        given_val = src.val is not None
        if given_val and data.n_meta >= len(src.clean):  # all of it
            meta = src.clean
        else:
            sp = balanced(src.clean.labels, n_meta=data.n_meta, n_val=0 if given_val else data.n_val, seed=s,
                          what="clean pool")
            meta = src.clean.take(sp.meta)
        val = src.val.take(subsample(np.arange(len(src.val)), data.n_val, s + 3)) if given_val else src.clean.take(
            sp.val)
        pool = src.pool
    return pool, meta, val


def plan_splits(data: DataConfig, src: Source, coarse: np.ndarray | None, override: tuple | None) -> Plan:
    """Split, corrupt (synthetic noise) and relabel (``--labels``) a source."""
    c = len(src.classes)
    pool, meta, val = draw_clean_splits(data, src)
    test = src.test if src.test is not None else sources.empty_items()
    test = test.take(subsample(np.arange(len(test)), data.max_test, data.split_seed + 2))
    held = set(meta.keys) | set(val.keys) | set(test.keys) if src.clean is not None else set()
    in_pool = [i for i, k in enumerate(pool.keys) if k not in held]
    removed = len(pool) - len(in_pool)
    train = pool.take(subsample(np.asarray(in_pool, np.int64), data.max_train, data.split_seed + 1))
    noise: dict = {"kind": data.noise, "rate": data.noise_rate, "seed": data.noise_seed, "mapping": {},
                   "transition": None}
    if data.noise != "none":
        if src.real_noise:
            raise PipelineError(f"{data.dataset}: its labels are noisy as given; synthetic noise needs "
                                "data.noise=none (or --noise none)")
        mapping = noise_mapping(data, coarse, src.pool)
        transition = make_transition(data.noise, c, data.noise_rate, mapping=mapping)
        noisy = corrupt(train.true, transition, seed=data.noise_seed)
        train = replace(train, labels=noisy.noisy)
        noise.update(mapping={str(k): v for k, v in (mapping or {}).items()}, transition=transition.tolist())
    info = {"removed_from_train": removed, "meta_is_clean": src.clean_is_clean}
    if override is not None:
        train, info["labels_file"] = apply_override(train, *override)
    known = train.true >= 0
    noise["known_true_labels"] = int(known.sum())
    noise["realized_rate"] = float((train.labels[known] != train.true[known]).mean()) if known.any() else None
    noise["realized_transition"] = realized_matrix(train.true[known], train.labels[known], c).round(6).tolist()
    return Plan({"train": train, "meta": meta, "val": val, "test": test}, src.classes, src.image, noise, info)


def apply_override(train: Items, path: str, column: str, labels: dict) -> tuple[Items, dict]:
    """Replace the given labels of the training samples the file lists."""
    ids = train.keys if column == "key" else train.source_index.tolist()
    new = train.labels.copy()
    hit = 0
    for i, k in enumerate(ids):
        if k in labels:
            new[i] = labels[k]
            hit += 1
    if hit == 0:
        raise PipelineError(f"{path}: none of its {len(labels)} rows matches a training sample by {column}")
    record = {"path": path, "sha256": shards.sha256_file(path), "by": column, "rows": len(labels),
              "applied": hit, "not_in_training_split": len(labels) - hit}
    return replace(train, labels=new), record


# ------------------------------------------------------------------ writing


@dataclass
class ShardTask:
    name: str
    samples: list[shards.ShardSample]


def shard_tasks(plan: Plan, shard_size: int) -> dict[str, list[ShardTask]]:
    """Per split, its shards; sample keys are positions (the bank row for train)."""
    out = {}
    for split, items in plan.splits.items():
        tasks = []
        for s, start in enumerate(range(0, len(items), shard_size)):
            samples = []
            for i in range(start, min(start + shard_size, len(items))):
                true = int(items.true[i]) if split == "train" else int(items.labels[i])
                samples.append(shards.ShardSample(
                    key=f"{i:08d}", label=int(items.labels[i]), true=true, source_key=items.keys[i],
                    array=None if items.images is None else items.images[i],
                    path=None if items.paths is None else items.paths[i]))
            tasks.append(ShardTask(f"{split}-{s:05d}.tar", samples))
        out[split] = tasks
    return out


def plan_fingerprint(plan: Plan, shard_size: int) -> str:
    h = hashlib.sha256(f"{shards.FORMAT}|{shard_size}|{plan.classes}".encode())
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
    return shards.write_shard(Path(directory) / task.name, task.samples)


def completed(partial: Path, name: str) -> dict | None:
    """The record of a shard already written and verified in ``partial``, else None."""
    side, path = partial / f"{name}.json", partial / name
    if not (side.is_file() and path.is_file()):
        return None
    rec = json.loads(side.read_text())
    if path.stat().st_size != rec["bytes"] or shards.sha256_file(path) != rec["sha256"]:
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
        shards.atomic_write_text(partial / f"{task.name}.json", json.dumps(rec))
        records[task.name] = rec
    return {split: [records[t.name] for t in ts] for split, ts in tasks.items()}


def prepared_with(data: DataConfig) -> dict:
    """The options that decide the shards' contents (what a rerun must match)."""
    keep = ("dataset", "raw_dir", "noise", "noise_rate", "noise_seed", "split_seed", "n_meta", "n_val",
            "max_train", "max_test", "shard_size", "labels_file", "clean_list", "test_list", "skip_bad")
    return {k: getattr(data, k) for k in keep}


def bad_summary(bad: list[Bad]) -> dict:
    def kind(b: Bad) -> str:
        r = b.reason
        for needle, name in (("missing", "missing_image"), ("corrupt", "corrupt_image"),
                             ("labelled", "conflicting_labels"), ("outside", "label_out_of_range"),
                             ("not one of", "label_out_of_range"), ("no label", "no_label")):
            if needle in r:
                return name
        return "unparsable_line"

    return {"skipped": len(bad), "by_reason": dict(Counter(kind(b) for b in bad)), "file": "skipped.jsonl"}


def build_manifest(data: DataConfig, plan: Plan, records: dict, labels: dict, bad: list[Bad], fp: str) -> dict:
    return {
        "format": shards.FORMAT, "created": shards.now(), "dataset": data.dataset,
        "num_classes": len(plan.classes), "classes": list(plan.classes),
        "image": {**plan.image, "mean": list(plan.image["mean"]), "std": list(plan.image["std"])},
        "noise": plan.noise, "split_seed": data.split_seed, **plan.info,
        "splits": {k: {"count": sum(r["count"] for r in v), "shards": v} for k, v in records.items()},
        "labels": labels, "bad": bad_summary(bad),
        "prepared_with": prepared_with(data), "plan_sha256": fp,
    }


# ------------------------------------------------------------------ the whole job


def partial_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def gather_bad(data: DataConfig, src: Source, partial: Path, log) -> tuple[Source, list[Bad], tuple | None]:
    """Every problem in the input, stopping unless ``data.skip_bad``; returns the source
    without the bad images, the bad list, and the parsed ``--labels`` override."""
    bad = list(src.bad)
    override = None
    if data.labels_file:
        column, labels = sources.read_label_override(Path(data.labels_file), src.classes, bad)
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


def prepare(data: DataConfig, out: str | Path, *, raw: ImageArrays | None = None, log=print) -> Path:
    """Write the shard directory ``out`` for ``data``; returns it.

    An ``out`` that already holds shards prepared with the same options is kept as
    it is; one prepared with other options is an error (nothing is overwritten).
    """
    out = Path(out)
    if (out / "manifest.json").is_file():
        have = json.loads((out / "manifest.json").read_text()).get("prepared_with")
        if have is not None and raw is None and have != prepared_with(data):
            diff = sorted(k for k in have if have.get(k) != prepared_with(data).get(k))
            raise PipelineError(f"{out}: holds shards prepared with other options ({', '.join(diff)} differ); "
                                "choose another --out or remove it")
        log(f"{out}: already prepared")
        return out
    if out.exists() and any(out.iterdir()):
        raise PipelineError(f"{out}: exists, is not empty and holds no manifest.json; choose another --out")
    partial = partial_dir(out)
    partial.mkdir(parents=True, exist_ok=True)
    src, coarse = read_source(data, raw)
    src, bad, override = gather_bad(data, src, partial, log)
    plan = plan_splits(data, src, coarse, override)
    fp = plan_fingerprint(plan, data.shard_size)
    if (partial / "plan.json").is_file() and json.loads((partial / "plan.json").read_text())["plan_sha256"] != fp:
        log(f"{partial}: left by a run with other inputs; starting over")
        for p in partial.iterdir():
            if p.name != "scan.json":
                p.unlink()
    shards.atomic_write_text(partial / "plan.json", json.dumps({"plan_sha256": fp}))
    log(f"writing shards for {out} ...")
    records = write_all(shard_tasks(plan, data.shard_size), partial, workers=data.prepare_workers, log=log)
    finish(data, plan, records, bad, fp, partial, out)
    log(summary_line(json.loads((out / "manifest.json").read_text())))
    return out


def finish(data: DataConfig, plan: Plan, records: dict, bad: list[Bad], fp: str, partial: Path, out: Path) -> None:
    """Labels table, skipped list and manifest (last), then the rename into place."""
    train = plan.splits["train"]
    labels = shards.write_labels_table(partial / shards.LABELS_FILE, train.labels,
                                       train.true, train.keys, train.source_index)
    shards.atomic_write_text(partial / "skipped.jsonl", "".join(json.dumps(b.to_dict()) + "\n" for b in bad))
    for p in list(partial.iterdir()):
        if p.suffix == ".json" and p.name != "manifest.json":
            p.unlink()
    manifest = build_manifest(data, plan, records, labels, bad, fp)
    shards.atomic_write_text(partial / "manifest.json", json.dumps(manifest, indent=1))
    shards.publish_dir(partial, out)


def summary_line(m: dict) -> str:
    s = m["splits"]
    rate = m["noise"]["realized_rate"]
    return (f"wrote {s['train']['count']} train / {s['meta']['count']} meta / {s['val']['count']} val / "
            f"{s['test']['count']} test samples; realized noise rate "
            f"{'unknown' if rate is None else f'{rate:.4f}'}; {m['bad']['skipped']} bad input(s) skipped")


def ensure_shards(data: DataConfig, *, raw: ImageArrays | None = None, log=print) -> str:
    """The shard directory for ``data``, written first if it is missing.

    ``data.shards`` (an explicit directory or URL) is never written here: it must
    exist. ``raw`` replaces loading ``data.dataset`` (tests pass small fakes).
    """
    target = data.shard_dir()
    if shards.exists(shards.join(target, "manifest.json")):
        return target
    if data.shards or shards.is_url(target):
        raise PipelineError(f"{target}: no manifest.json; write the shards first: "
                            f"python pipeline/prepare.py {data.dataset} --raw RAW --out DIR")
    return str(prepare(data, target, raw=raw, log=log))


# ------------------------------------------------------------------ command line


def kind_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pipeline/prepare.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--out", required=True, help="the shard directory to write")
    p.add_argument("--raw", help="the release files (see above); default: the preset's data.raw_dir")
    p.add_argument("--labels", help="CSV/Parquet (key or index, label): training labels to use instead")
    p.add_argument("--clean", help="folder: listing (path,label) of a clean subset for the meta and val sets")
    p.add_argument("--test", help="folder: listing (path,label) of a test set")
    p.add_argument("--skip-bad", action="store_true", help="leave bad samples out (and count them) instead of stopping")
    p.add_argument("--workers", type=int, help="processes checking images and writing shards (default 1)")
    p.add_argument("--shard-size", type=int, help="samples per shard")
    for opt, typ in (("noise", str), ("noise-rate", float), ("noise-seed", int), ("split-seed", int),
                     ("n-meta", int), ("n-val", int), ("max-train", int), ("max-test", int)):
        p.add_argument(f"--{opt}", type=typ, help=f"data.{opt.replace('-', '_')}")
    return p


def data_from_kind_args(argv: list[str]) -> tuple[DataConfig, Path]:
    from pipeline.cli import load_config

    a = kind_parser().parse_args(argv)
    data = load_config(KIND_PRESETS[a.kind]).data
    fields = {"raw_dir": a.raw, "labels_file": a.labels, "clean_list": a.clean, "test_list": a.test,
              "prepare_workers": a.workers, "shard_size": a.shard_size, "noise": a.noise,
              "noise_rate": a.noise_rate, "noise_seed": a.noise_seed, "split_seed": a.split_seed,
              "n_meta": a.n_meta, "n_val": a.n_val, "max_train": a.max_train, "max_test": a.max_test}
    fields = {k: v for k, v in fields.items() if v is not None}
    for k in ("raw_dir", "labels_file", "clean_list", "test_list"):
        if k in fields and "://" not in fields[k]:
            fields[k] = os.path.abspath(fields[k])
    data = replace(data, dataset=a.kind, skip_bad=a.skip_bad or data.skip_bad, **fields)
    return data, Path(os.path.abspath(a.out))


def main(argv: list[str] | None = None) -> int:
    from pipeline.cli import parse_args, run_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in KINDS:
        holder = {}

        def parse():
            holder["data"], holder["out"] = data_from_kind_args(argv)
            return holder["data"]

        return run_cli(parse, lambda data: print(prepare(data, holder["out"])) or 0)

    return run_cli(lambda: parse_args(argv, prog="pipeline/prepare.py", doc=__doc__),
                   lambda cfg: print(ensure_shards(cfg.data)) or 0)


if __name__ == "__main__":
    sys.exit(main())
