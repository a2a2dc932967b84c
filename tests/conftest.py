"""Shared fixtures: small seeded fakes in the real formats."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.prep.fashion_mnist import ImageArrays
from pipeline.prep.job import ensure_shards
from pipeline.training.settings.config import DataConfig
from tests import fakes

ROOT = Path(__file__).resolve().parents[1]


def ray_env() -> dict[str, str]:
    """Environment for a test's Ray driver: its own local cluster (``RAY_ADDRESS=local``),
    never one a ``ray start`` on this machine left behind, live or dead."""
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RAY_ADDRESS": "local",
        "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
    }


def fake_images(n_train: int = 600, n_test: int = 200, num_classes: int = 10, seed: int = 0) -> ImageArrays:
    """28×28 uint8 images whose class is a bright square at a class-specific place, plus noise."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = np.arange(n) % num_classes
        rng.shuffle(y)
        x = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
        for i, c in enumerate(y):
            r, q = divmod(int(c), 4)
            x[i, 2 + 6 * r : 8 + 6 * r, 2 + 6 * q : 8 + 6 * q] = 220
        return x, y.astype(np.int64)

    tx, ty = make(n_train)
    ex, ey = make(n_test)
    return ImageArrays(tx, ty, ex, ey, tuple(f"class{c}" for c in range(num_classes)), (0.2,), (0.3,))


@pytest.fixture
def fake_data_cfg(tmp_path) -> DataConfig:
    return DataConfig(
        shard_root=str(tmp_path / "shards"),
        raw_dir=str(tmp_path / "raw"),
        n_meta=50,
        n_val=50,
        shard_size=128,
        noise="sym",
        noise_rate=0.4,
        shuffle_buffer=64,
    )


@pytest.fixture
def fake_shards(fake_data_cfg) -> Path:
    """A complete shard directory (train 500, meta 50, val 50, test 200) from fake images."""
    return Path(ensure_shards(fake_data_cfg, raw=fake_images(), log=lambda s: None))


@pytest.fixture
def c1m(tmp_path) -> fakes.FakeClothing1M:
    """A tiny Clothing1M release tree (:func:`tests.fakes.make_clothing1m`)."""
    return fakes.make_clothing1m(tmp_path / "clothing1m")
