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
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

from pipeline.errors import INTERRUPTED  # light: no torch, so it loads before a Ctrl-C handler is needed

if __name__ == "__main__":  # a Ctrl-C while the imports below load (seconds): no traceback either
    signal.signal(signal.SIGINT, lambda *_: (print(INTERRUPTED, file=sys.stderr, flush=True), os._exit(130)))

from pipeline.prep.job import ensure_shards, prepare
from pipeline.shardset.spec import DATASETS, PrepareOptions
from pipeline.training.settings.cli import parse_args, run_cli
from pipeline.training.settings.presets import PRESETS

KIND_PRESETS = {
    "fashion-mnist": "fmnist-sym40",
    "cifar10": "cifar10-sym40",
    "cifar100": "cifar100-sym40",
    "clothing1m": "clothing1m",
    "folder": "folder",
}


def kind_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pipeline/prepare.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("kind", choices=DATASETS)
    p.add_argument("--out", required=True, help="the shard directory to write")
    p.add_argument("--raw", help="the release files (see above); default: the preset's data.raw_dir")
    p.add_argument("--labels", help="CSV/Parquet (key or index, label): training labels to use instead")
    p.add_argument("--clean", help="folder: listing (path,label) of a clean subset for the meta and val sets")
    p.add_argument("--test", help="folder: listing (path,label) of a test set")
    p.add_argument("--skip-bad", action="store_true", help="leave bad samples out (and count them) instead of stopping")
    p.add_argument("--workers", type=int, help="processes checking images and writing shards (default 1)")
    p.add_argument("--shard-size", type=int, help="samples per shard")
    for opt, typ in (
        ("noise", str),
        ("noise-rate", float),
        ("noise-seed", int),
        ("split-seed", int),
        ("n-meta", int),
        ("n-val", int),
        ("max-train", int),
        ("max-test", int),
    ):
        p.add_argument(f"--{opt}", type=typ, help=f"data.{opt.replace('-', '_')}")
    return p


def data_from_kind_args(argv: list[str]) -> tuple[PrepareOptions, Path]:
    a = kind_parser().parse_args(argv)
    data = PRESETS[KIND_PRESETS[a.kind]]().data
    fields = {
        "raw_dir": a.raw,
        "labels_file": a.labels,
        "clean_list": a.clean,
        "test_list": a.test,
        "prepare_workers": a.workers,
        "shard_size": a.shard_size,
        "noise": a.noise,
        "noise_rate": a.noise_rate,
        "noise_seed": a.noise_seed,
        "split_seed": a.split_seed,
        "n_meta": a.n_meta,
        "n_val": a.n_val,
        "max_train": a.max_train,
        "max_test": a.max_test,
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    for k in ("raw_dir", "labels_file", "clean_list", "test_list"):
        if k in fields and "://" not in fields[k]:
            fields[k] = os.path.abspath(fields[k])
    data = replace(data, dataset=a.kind, skip_bad=a.skip_bad or data.skip_bad, **fields)
    return data, Path(os.path.abspath(a.out))


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on run_cli reports it
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DATASETS:
        holder = {}

        def parse():
            holder["data"], holder["out"] = data_from_kind_args(argv)
            return holder["data"]

        return run_cli(parse, lambda data: print(prepare(data, holder["out"])) or 0)

    return run_cli(
        lambda: parse_args(argv, prog="pipeline/prepare.py", doc=__doc__),
        lambda cfg: print(ensure_shards(cfg.data)) or 0,
    )


if __name__ == "__main__":
    code = main()
    # done, and said so: a Ctrl-C while the interpreter shuts down (its handlers already reset) must
    # not turn a finished preparation into a death by signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)
