"""Checkpoints (at epoch ends and, optionally, inside epochs): what goes in them, and
where they are saved, found and pruned.

A *reporter* hides whether we run under Ray Train (``ray.train.report`` and
``ray.train.get_checkpoint``) or in one plain process (benchmarks, tests).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from pipeline.errors import CheckpointError
from pipeline.rundir import (
    BEST_DIR,
    CHECKPOINT_PREFIX,
    LOCAL_BEST,
    LOCAL_CHECKPOINTS,
    STATE_FILE,
    checkpoint_name,
    checkpoint_order,
)
from pipeline.storage import atomic_path, atomic_torch_save, disk_full_error, disk_full_in, disk_full_named


def save_state(state: dict, directory: Path) -> Path:
    """Write ``state`` to ``directory/state.pt`` atomically (temp file, then rename)."""
    with disk_full_named(directory):
        directory.mkdir(parents=True, exist_ok=True)
    final = directory / STATE_FILE
    atomic_torch_save(state, final)
    return final


def copy_state(src: Path, directory: Path) -> Path:
    """Copy ``src/state.pt`` to ``directory/state.pt`` atomically (no second serialization)."""
    with disk_full_named(directory):
        directory.mkdir(parents=True, exist_ok=True)
    final = directory / STATE_FILE
    with atomic_path(final) as tmp:
        shutil.copyfile(Path(src) / STATE_FILE, tmp)
    return final


def load_state(directory: str | Path) -> dict:
    """The state in ``directory/state.pt``; a missing, truncated, foreign or unsafe file is a
    :class:`CheckpointError` naming it (only tensors and plain containers are loaded)."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        what = "no such directory" if not Path(directory).exists() else f"it holds no {STATE_FILE}"
        raise CheckpointError(f"{path}: no checkpoint there ({what})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several kinds: UnpicklingError, RuntimeError, EOFError …
        text = str(e)
        why = (
            "it holds objects other than tensors and plain containers, which are not loaded (not a checkpoint "
            "written by this project)"
            if "Weights only load failed" in text
            else f"cannot be read: {type(e).__name__}: {text.strip().splitlines()[0] if text.strip() else ''}; "
            "truncated (a disk that filled?) or not a checkpoint"
        )
        raise CheckpointError(f"{path}: {why}") from None
    missing = [k for k in ("model", "bank", "epoch", "history") if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a training checkpoint of this project (no {', '.join(missing)})")
    return state


def state_mismatch(state: dict, *, model: dict, num_samples: int, num_classes: int) -> str | None:
    """What keeps ``state`` (a :func:`load_state` dict) from resuming this run, or None.

    model : the new run's model ``state_dict()`` (names and shapes are compared);
    num_samples, num_classes : the training split's size and class count (the bank's shape).
    """
    got = state["model"]
    extra, lacking = sorted(set(got) - set(model)), sorted(set(model) - set(got))
    if extra or lacking:
        return (
            f"its model is another architecture ({len(lacking)} of this run's parameters missing, e.g. "
            f"{(lacking or ['-'])[0]!r}; {len(extra)} unknown, e.g. {(extra or ['-'])[0]!r}); check model.arch"
        )
    for name, t in model.items():
        if tuple(got[name].shape) != tuple(t.shape):
            return (
                f"its parameter {name!r} has shape {tuple(got[name].shape)}, this run's {tuple(t.shape)} "
                "(another class count, image size or model.arch?)"
            )
    bank = state["bank"].get("y_tilde") if isinstance(state["bank"], dict) else None
    if bank is None or tuple(bank.shape) != (num_samples, num_classes):
        shape = None if bank is None else tuple(bank.shape)
        return (
            f"its label bank has shape {shape}, this run's data ({num_samples} training samples, "
            f"{num_classes} classes) needs {(num_samples, num_classes)}: it was written for other shards"
        )
    return None


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
        self.source = f"run.resume_from={self.resume_from}" if self.resume_from else None
        return load_state(self.resume_from) if self.resume_from else None

    def report(
        self, metrics: dict, state: dict | None, epoch: int, *, best: bool = False, step: int | None = None
    ) -> None:
        """``step``: a checkpoint inside ``epoch`` at that step, else at its end."""
        if state is not None and self.rank == 0:
            root = self.run_dir / LOCAL_CHECKPOINTS
            save_state(state, root / checkpoint_name(epoch, step))
            if best:
                copy_state(root / checkpoint_name(epoch, step), root / LOCAL_BEST)
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
            self.source = f"run.resume_from={self.resume_from}" if self.resume_from else None
            return load_state(self.resume_from) if self.resume_from else None
        self.source = f"the run's latest checkpoint {ckpt.path}"
        with ckpt.as_directory() as d:
            return load_state(d)

    def report(
        self, metrics: dict, state: dict | None, epoch: int, *, best: bool = False, step: int | None = None
    ) -> None:
        import ray.train

        with tempfile.TemporaryDirectory() as tmp:
            if state is not None and self.rank == 0:
                save_state(state, Path(tmp))
                if best:
                    copy_state(Path(tmp), self.run_dir / BEST_DIR)
                name = CHECKPOINT_PREFIX + checkpoint_name(epoch, step)
                try:
                    ray.train.report(
                        metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=name
                    )
                except Exception as e:
                    if not disk_full_in(e):
                        raise
                    raise self.unpersisted(self.run_dir / name) from None
                self.check_persisted(Path(tmp) / STATE_FILE, self.run_dir / name / STATE_FILE)
            else:
                ray.train.report(metrics)

    @staticmethod
    def unpersisted(target: Path) -> Exception:
        """Ray's copy of a checkpoint into ``target`` met a full disk: remove the part copied
        (Ray did not register it; the previous checkpoint stays the latest) and say so."""
        part = target / STATE_FILE
        written = part.stat().st_size if part.is_file() else None
        shutil.rmtree(target, ignore_errors=True)
        return disk_full_error(part, written=written)

    @staticmethod
    def check_persisted(src: Path, dst: Path) -> None:
        """After Ray persisted a checkpoint to local (or mounted) storage: the copy is whole."""
        if dst.is_file() and dst.stat().st_size != src.stat().st_size:
            raise CheckpointError(
                f"{dst}: the persisted checkpoint has {dst.stat().st_size:,} bytes, the one "
                f"written {src.stat().st_size:,}: the storage did not keep it whole"
            )
