"""What decides the contents of a shard directory: the options data preparation reads.

The training config's ``data`` section (:class:`pipeline.training.settings.config.DataConfig`)
extends these with how the shards stream; the keys are the same (``data.noise``, ...).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from mslc.noise import NOISE_KINDS
from pipeline.errors import require

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "clothing1m", "folder")


@dataclass
class PrepareOptions:
    """Where the data comes from, how it is corrupted and split, how it is sharded."""

    dataset: str = "fashion-mnist"
    raw_dir: str = "data/raw"  # the release files (see pipeline/prepare.py --help); folder: tree or listing
    shard_root: str = "data/shards"  # shards go to shard_root/<spec name> ...
    shards: str = ""  # ... unless this names the shard directory or URL (s3://, gs://) to read
    labels_file: str = ""  # CSV/Parquet (key or index, label) replacing the given training labels
    clean_list: str = ""  # folder: listing (path, label) of a clean subset; meta and val come from it
    test_list: str = ""  # folder: listing (path, label) of a test set
    skip_bad: bool = False  # prepare: skip (and count) bad samples instead of stopping
    prepare_workers: int = 1  # processes writing shards
    noise: str = "sym"
    noise_rate: float = 0.4
    noise_seed: int = 0
    split_seed: int = 0
    n_meta: int = 1000  # clean meta samples, class-balanced
    n_val: int = 1000  # clean validation samples; for Clothing1M a cap on its clean val list (0 = all)
    max_train: int = 0  # 0 = all; else a seeded class-balanced subset of the train pool
    max_test: int = 0  # 0 = all
    shard_size: int = 10000  # samples per shard

    def __post_init__(self) -> None:
        require(self.dataset in DATASETS, f"data.dataset must be one of {DATASETS}, got {self.dataset!r}")
        require(self.noise in NOISE_KINDS, f"data.noise must be one of {NOISE_KINDS}, got {self.noise!r}")
        require(0.0 <= self.noise_rate <= 1.0, f"data.noise_rate must be in [0, 1], got {self.noise_rate}")
        for name in ("n_meta", "n_val", "max_train", "max_test"):
            require(getattr(self, name) >= 0, f"data.{name} must be >= 0, got {getattr(self, name)}")
        require(self.n_meta > 0, "data.n_meta must be > 0: MSLC needs a clean meta set")
        require(self.shard_size > 0, f"data.shard_size must be > 0, got {self.shard_size}")
        require(self.prepare_workers >= 1, f"data.prepare_workers must be >= 1, got {self.prepare_workers}")
        require(
            not (self.clean_list or self.test_list) or self.dataset == "folder",
            "data.clean_list and data.test_list are for data.dataset=folder",
        )

    def spec_name(self) -> str:
        """A directory name that changes whenever the written shards would."""
        sub = f"-n{self.max_train}" if self.max_train else ""
        sub += f"-t{self.max_test}" if self.max_test else ""
        inputs = [self.labels_file, self.clean_list, self.test_list, "skip-bad" if self.skip_bad else ""]
        if self.dataset in ("clothing1m", "folder"):
            inputs.append(self.raw_dir)
        if any(inputs):
            sub += "-" + hashlib.sha256("\0".join(inputs).encode()).hexdigest()[:8]
        return (
            f"{self.dataset}-{self.noise}{self.noise_rate:g}-ns{self.noise_seed}-ss{self.split_seed}"
            f"-m{self.n_meta}-v{self.n_val}{sub}"
        )

    def shard_dir(self) -> str:
        """``shards`` when set, else ``shard_root/<spec name>`` (a path, or a URL under a URL root)."""
        if self.shards:
            return self.shards
        if "://" in self.shard_root:
            return self.shard_root.rstrip("/") + "/" + self.spec_name()
        return str(Path(self.shard_root) / self.spec_name())


def prepared_with(data: PrepareOptions) -> dict:
    """The options that decide the shards' contents (what a rerun must match)."""
    keep = (
        "dataset",
        "raw_dir",
        "noise",
        "noise_rate",
        "noise_seed",
        "split_seed",
        "n_meta",
        "n_val",
        "max_train",
        "max_test",
        "shard_size",
        "labels_file",
        "clean_list",
        "test_list",
        "skip_bad",
    )
    return {k: getattr(data, k) for k in keep}
