"""Turn a raw data set into noisy-label WebDataset shards.

    python pipeline/prepare.py [--config PRESET_OR_FILE] [key=value ...]

writes ``data.shard_root/<spec name>/`` for the config's data section (the same
place ``pipeline/train.py`` reads) and prints its path. Complete shards are kept:
running it again does nothing.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from mslc.noise import CIFAR10_ASYM, FMNIST_ASYM, corrupt, make_transition
from mslc.splits import balanced_split
from pipeline import shards
from pipeline.config import DataConfig
from pipeline.datasets import ImageArrays, load_fashion_mnist
from pipeline.errors import PipelineError


def load_raw(data: DataConfig) -> ImageArrays:
    if data.dataset == "fashion-mnist":
        return load_fashion_mnist(data.raw_dir)
    raise PipelineError(
        f"dataset {data.dataset!r}: no shards at {data.shard_dir()} and this version can only write "
        "Fashion-MNIST shards; write the shards for this data set first"
    )


def noise_mapping(data: DataConfig) -> dict[int, int] | None:
    if data.noise != "asym":
        return None
    maps = {"fashion-mnist": FMNIST_ASYM, "cifar10": CIFAR10_ASYM}
    if data.dataset in maps:
        return maps[data.dataset]
    raise PipelineError(f"no asymmetric noise map for dataset {data.dataset!r}")


def subsample(idx: np.ndarray, n: int, seed: int) -> np.ndarray:
    if not n or n >= len(idx):
        return idx
    return np.sort(np.random.default_rng(seed).choice(idx, size=n, replace=False))


def write_shards(data: DataConfig, raw: ImageArrays, out_dir: Path) -> dict:
    """Split, corrupt and write every split of ``raw`` into ``out_dir``; returns the manifest."""
    c = len(raw.classes)
    split = balanced_split(raw.train_y, n_meta=data.n_meta, n_val=data.n_val, seed=data.split_seed)
    train_idx = subsample(split.train, data.max_train, data.split_seed + 1)
    mapping = noise_mapping(data)
    transition = make_transition(data.noise, c, data.noise_rate, mapping=mapping)
    noisy = corrupt(raw.train_y[train_idx], transition, seed=data.noise_seed)
    test_idx = subsample(np.arange(len(raw.test_y)), data.max_test, data.split_seed + 2)

    keys = [f"{i:08d}" for i in range(len(train_idx))]
    splits = {
        "train": shards.write_split(out_dir, "train", raw.train_x[train_idx], noisy.noisy,
                                    true_labels=noisy.true, keys=keys, shard_size=data.shard_size),
    }
    for name, x, y, idx in (("meta", raw.train_x, raw.train_y, split.meta), ("val", raw.train_x, raw.train_y, split.val),
                            ("test", raw.test_x, raw.test_y, test_idx)):
        splits[name] = shards.write_split(out_dir, name, x[idx], y[idx], true_labels=y[idx],
                                          keys=[f"{i:08d}" for i in idx], shard_size=data.shard_size)
    labels = shards.write_labels_table(out_dir / shards.LABELS_FILE, noisy.noisy, noisy.true, keys, train_idx)
    h, w = raw.train_x.shape[1:3]
    return {
        "format": shards.FORMAT,
        "created": shards.now(),
        "dataset": data.dataset,
        "num_classes": c,
        "classes": list(raw.classes),
        "image": {"channels": 1 if raw.train_x.ndim == 3 else 3, "height": int(h), "width": int(w),
                  "mean": list(raw.mean), "std": list(raw.std)},
        "noise": {"kind": data.noise, "rate": data.noise_rate, "seed": data.noise_seed,
                  "mapping": {str(k): v for k, v in (mapping or {}).items()},
                  "realized_rate": noisy.rate, "transition": noisy.transition.tolist(),
                  "realized_transition": noisy.realized.round(6).tolist()},
        "split_seed": data.split_seed,
        "splits": {k: {"count": sum(r["count"] for r in v), "shards": v} for k, v in splits.items()},
        "labels": labels,
    }


def ensure_shards(data: DataConfig, *, raw: ImageArrays | None = None, log=print) -> Path:
    """The shard directory for ``data``, written first if it is not there.

    Writing goes to a temporary directory next to the final one, which is renamed
    into place only when complete: an interrupted run leaves nothing half-written.
    ``raw`` replaces loading ``data.dataset`` (tests pass small fakes).
    """
    final = data.shard_dir()
    if (final / "manifest.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    raw = raw if raw is not None else load_raw(data)
    log(f"writing shards to {final} ...")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        manifest = write_shards(data, raw, tmp)
        shards.atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=1))
        shards.publish_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    m = manifest
    log(
        f"wrote {m['splits']['train']['count']} train / {m['splits']['meta']['count']} meta / "
        f"{m['splits']['val']['count']} val / {m['splits']['test']['count']} test samples; "
        f"realized noise rate {m['noise']['realized_rate']:.4f}"
    )
    return final


def main(argv: list[str] | None = None) -> int:
    from pipeline.cli import parse_args, run_cli

    def body(cfg) -> int:
        print(ensure_shards(cfg.data))
        return 0

    return run_cli(lambda: parse_args(argv, prog="pipeline/prepare.py", doc=__doc__), body)


if __name__ == "__main__":
    sys.exit(main())
