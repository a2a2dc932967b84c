"""Per-epoch checkpoints: what goes in them, and where they are saved and found.

A *reporter* hides whether we run under Ray Train (``ray.train.report`` and
``ray.train.get_checkpoint``) or in one plain process (benchmarks, tests).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

STATE_FILE = "state.pt"


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(),
            "numpy_pos": int(np.random.get_state()[2]), "python": list(random.getstate()[1])}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(("MT19937", np.asarray(s["numpy"], dtype=np.uint32), s["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(s["python"]), None))


def save_state(state: dict, directory: Path) -> Path:
    """Write ``state`` to ``directory/state.pt`` atomically (temp file, then rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / STATE_FILE
    tmp = directory / f"state.tmp-{os.getpid()}.pt"
    torch.save(state, tmp)
    os.replace(tmp, final)
    return final


def copy_state(src: Path, directory: Path) -> Path:
    """Copy ``src/state.pt`` to ``directory/state.pt`` atomically (no second serialization)."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / STATE_FILE
    tmp = directory / f"state.tmp-{os.getpid()}.pt"
    shutil.copyfile(Path(src) / STATE_FILE, tmp)
    os.replace(tmp, final)
    return final


def load_state(directory: str | Path) -> dict:
    path = Path(directory) / STATE_FILE
    return torch.load(path, map_location="cpu", weights_only=True)


BEST_DIR = "checkpoint_best"


class LocalReporter:
    """No Ray (one process, or plain ``torch.distributed`` ranks): rank 0 writes
    checkpoints to ``run_dir/checkpoints/epoch_XXXX/``, keeps the latest ``keep`` (0: all),
    and a copy of the best-validation epoch in ``run_dir/checkpoints/best/``."""

    def __init__(self, run_dir: str | Path, *, resume_from: str | Path | None = None, keep: int = 2) -> None:
        from mslc import dist

        self.rank, self.world_size = dist.rank(), dist.world_size()
        self.run_dir = Path(run_dir)
        self.resume_from = resume_from
        self.keep = keep

    def restore(self) -> dict | None:
        return load_state(self.resume_from) if self.resume_from else None

    def report(self, metrics: dict, state: dict | None, epoch: int, *, best: bool = False) -> None:
        if state is not None and self.rank == 0:
            root = self.run_dir / "checkpoints"
            save_state(state, root / f"epoch_{epoch:04d}")
            if best:
                copy_state(root / f"epoch_{epoch:04d}", root / "best")
            if self.keep:
                for old in sorted(root.glob("epoch_*"))[: -self.keep]:
                    shutil.rmtree(old)
        from mslc import dist

        dist.barrier()


class RayReporter:
    """Under Ray Train: every rank reports each epoch; rank 0 attaches the checkpoint
    (Ray keeps the latest ``run.keep_checkpoints``) and writes the best-validation epoch's
    state to ``run_dir/checkpoint_best/``."""

    def __init__(self, run_dir: str | Path, *, resume_from: str | Path | None = None) -> None:
        import ray.train

        self.run_dir = Path(run_dir)
        self.resume_from = resume_from
        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()

    def restore(self) -> dict | None:
        import ray.train

        ckpt = ray.train.get_checkpoint()  # set after a failure: the run's latest checkpoint
        if ckpt is None:
            return load_state(self.resume_from) if self.resume_from else None
        with ckpt.as_directory() as d:
            return load_state(d)

    def report(self, metrics: dict, state: dict | None, epoch: int, *, best: bool = False) -> None:
        import ray.train

        with tempfile.TemporaryDirectory() as tmp:
            if state is not None and self.rank == 0:
                save_state(state, Path(tmp))
                if best:
                    copy_state(Path(tmp), self.run_dir / BEST_DIR)
                ray.train.report(
                    metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                    checkpoint_dir_name=f"checkpoint_epoch_{epoch:04d}",
                )
            else:
                ray.train.report(metrics)
