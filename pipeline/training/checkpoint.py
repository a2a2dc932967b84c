"""Checkpoints (at epoch ends and, optionally, inside epochs): what goes in them, and
where they are saved, found and pruned.

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


def checkpoint_name(epoch: int, step: int | None = None) -> str:
    """``epoch_0003`` at the end of epoch 3; ``epoch_0003_step_000120`` at step 120 inside it."""
    return f"epoch_{epoch:04d}" if step is None else f"epoch_{epoch:04d}_step_{step:06d}"


def checkpoint_order(name: str) -> tuple[int, float]:
    """Sort key of :func:`checkpoint_name` names: inside an epoch before its end."""
    parts = name.split("_")
    return int(parts[1]), float(parts[3]) if len(parts) > 3 else float("inf")


class LocalReporter:
    """No Ray (one process, or plain ``torch.distributed`` ranks): rank 0 writes
    checkpoints to ``run_dir/checkpoints/`` (:func:`checkpoint_name`), keeps the latest
    ``keep`` (0: all), and a copy of the best-validation epoch in ``run_dir/checkpoints/best/``."""

    def __init__(self, run_dir: str | Path, *, resume_from: str | Path | None = None, keep: int = 2) -> None:
        from mslc import dist

        self.rank, self.world_size = dist.rank(), dist.world_size()
        self.run_dir = Path(run_dir)
        self.resume_from = resume_from
        self.keep = keep

    def restore(self) -> dict | None:
        return load_state(self.resume_from) if self.resume_from else None

    def report(self, metrics: dict, state: dict | None, epoch: int, *, best: bool = False,
               step: int | None = None) -> None:
        """``step``: a checkpoint inside ``epoch`` at that step, else at its end."""
        if state is not None and self.rank == 0:
            root = self.run_dir / "checkpoints"
            save_state(state, root / checkpoint_name(epoch, step))
            if best:
                copy_state(root / checkpoint_name(epoch, step), root / "best")
            if self.keep:
                kept = sorted((p for p in root.glob("epoch_*") if p.is_dir()), key=lambda p: checkpoint_order(p.name))
                for old in kept[: -self.keep]:
                    shutil.rmtree(old)
        from mslc import dist

        dist.barrier()


class RayReporter:
    """Under Ray Train: every rank reports each epoch (and each checkpoint inside one);
    rank 0 attaches the checkpoint (Ray keeps the latest ``run.keep_checkpoints``) and
    writes the best-validation epoch's state to ``run_dir/checkpoint_best/``."""

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

    def report(self, metrics: dict, state: dict | None, epoch: int, *, best: bool = False,
               step: int | None = None) -> None:
        import ray.train

        with tempfile.TemporaryDirectory() as tmp:
            if state is not None and self.rank == 0:
                save_state(state, Path(tmp))
                if best:
                    copy_state(Path(tmp), self.run_dir / BEST_DIR)
                ray.train.report(
                    metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                    checkpoint_dir_name=f"checkpoint_{checkpoint_name(epoch, step)}",
                )
            else:
                ray.train.report(metrics)
