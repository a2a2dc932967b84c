"""A worker's run: build, resume, then per epoch train → evaluate → outputs → report, then
the run's outputs; and Ray Train's entry.

:func:`run` is the whole run in the calling process (one plain process, or one rank of a
``torch.distributed`` group: benchmarks and tests); :func:`train_loop_per_worker` is what Ray
Train runs on each worker. The epoch itself is :func:`pipeline.training.run.epoch.train_epoch`;
everything written at an epoch's end and at the run's end is :class:`~.outputs.RunOutputs`.
"""

from __future__ import annotations

import math
import os
import sys
import time

import numpy as np
import torch

from mslc import dist
from pipeline.errors import CheckpointError
from pipeline.rundir import RunDir
from pipeline.training.data import assign
from pipeline.training.methods import registry as methods
from pipeline.training.methods.state import Data, TrainState, build_data, build_state
from pipeline.training.run import checkpoint, failures, outputs
from pipeline.training.run.epoch import MidEpochSaver, train_epoch
from pipeline.training.run.evaluate import bank_metrics, evaluate
from pipeline.training.settings.config import Config


def run(
    cfg: Config,
    reporter,
    device: torch.device | None = None,
    *,
    log=print,
    extras: tuple[outputs.OutputExtra, ...] = (),
) -> dict:
    """Train for ``cfg.optim.epochs`` epochs; write outputs to ``storage_path/name``.

    ``extras``: more outputs at each epoch's end and the run's (the review page's, say:
    :func:`pipeline.worker.run` passes it). Returns ``{'run_dir', 'summary', and on rank 0
    'corrected_labels', 'metrics', 'model', 'tensorboard'}`` plus what the extras add. An
    exception on any rank stops every rank (:class:`pipeline.training.run.failures.FailureWatch`).
    """
    with failures.FailureWatch():
        return _run(cfg, reporter, device or torch.device("cpu"), log=log, extras=extras)


def _run(cfg: Config, reporter, device: torch.device, *, log, extras) -> dict:
    setup_threads(cfg, reporter.world_size)
    st, data = build(cfg, device, lead=reporter.rank == 0, log=log)
    resume = restore(st, data, reporter, log=log)
    out = outputs.RunOutputs(cfg, data, lead=reporter.rank == 0, log=log, extras=extras)
    out.start(st)
    saver = MidEpochSaver(cfg, reporter, log if out.lead else None) if cfg.run.mid_epoch_checkpoints else None
    for epoch in range(st.epoch + 1, cfg.optim.epochs + 1):
        t0, lr = time.time(), st.opt_w.param_groups[0]["lr"]
        here = resume if resume is not None and resume["epoch"] == epoch else None  # a checkpoint inside this epoch
        stats = train_epoch(cfg, st, data, epoch, device, out.run_dir, out.progress(epoch), saver=saver, resume=here)
        record, table = evaluate_epoch(cfg, st, data, device, epoch, lead=out.lead)
        record = {"epoch": epoch, "lr": lr, **stats, **record, "epoch_seconds": time.time() - t0}
        st.epoch = epoch
        st.history.append(record)
        out.epoch(st, record, table)
        reporter.report(record, st.state_dict(), epoch, best=cfg.run.keep_best and is_best(st.history))
        if saver is not None:
            saver.clock.saved()
    return out.finish(st, device)


def build(cfg: Config, device: torch.device, *, lead: bool, log) -> tuple[TrainState, Data]:
    """The worker's data handles and its state (model, optimizers, bank, the method)."""
    data = build_data(cfg, device)
    assign.check_world(data.manifest, dist.world_size(), shard_dir=str(data.shard_dir), log=log if lead else None)
    st = build_state(cfg, data, device)
    st.method = methods.build_method(cfg, device)  # last: MW-Net's weight net draws from the RNG after the model
    if lead:
        log(compute_line(cfg, st, data, device))
    return st, data


def restore(st: TrainState, data: Data, reporter, *, log) -> dict | None:
    """Load the reporter's checkpoint (Ray's latest after a failure, or ``run.resume_from``)
    into ``st``; returns its position inside an epoch, or None (none, or an epoch's end)."""
    saved = reporter.restore()
    if saved is None:
        return None
    resume_state(st, saved, data, source=getattr(reporter, "source", None) or "the checkpoint")
    log(resumed_line(st, saved.get("position")))
    return saved.get("position")


def evaluate_epoch(
    cfg: Config, st: TrainState, data: Data, device: torch.device, epoch: int, *, lead: bool
) -> tuple[dict, dict]:
    """The epoch's figures after its last step: clean-validation and test accuracy (rank 0;
    NaN elsewhere, where records are not reported), the label metrics of the bank, the
    truth-free flag and churn counts; and the bank's table (``y_tilde``, ``y_hat``, ``alpha``,
    ``beta``: (N, C) / (N,) arrays). Collective: every rank calls it."""
    dist.average_buffers_(st.model)  # one set of batch-norm statistics to evaluate and save
    nan = float("nan")
    bad = cfg.data.bad_samples
    record = {
        "val_samples": data.manifest["splits"].get("val", {}).get("count", 0),
        "val_acc": evaluate(st.model, data, "val", device, cfg_bad_samples=bad) if lead else nan,
        "test_acc": evaluate(st.model, data, "test", device, cfg_bad_samples=bad) if lead else nan,
    }
    record["best_val_acc"] = max([record["val_acc"], *(h["val_acc"] for h in st.history)])  # so far (Tune ranks by it)
    label_stats, table = bank_metrics(st.bank, data)
    record.update(label_stats)
    corrected = table["y_tilde"].argmax(1)
    record.update(outputs.flag_counts(corrected, data.labels, None if st.corrected is None else st.corrected.numpy()))
    st.corrected = torch.from_numpy(corrected.astype(np.int32))
    return record, table


def is_best(history: list[dict]) -> bool:
    """Whether the last epoch has the best clean-validation accuracy so far (ties: the
    earliest stays best, as in :func:`pipeline.training.run.outputs.summarize`)."""
    vals = [-1.0 if h["val_acc"] is None or math.isnan(h["val_acc"]) else h["val_acc"] for h in history]
    return all(vals[-1] > v for v in vals[:-1])


def resume_state(st: TrainState, saved: dict, data: Data, *, source: str) -> None:
    """Load ``saved`` into ``st``, or raise :class:`CheckpointError` naming ``source`` and
    what differs (another model, class count or data size) rather than torch's text."""
    why = checkpoint.state_mismatch(
        saved, model=st.model.state_dict(), num_samples=len(data.labels), num_classes=data.num_classes
    )
    if why is None:
        try:
            st.load_state_dict(saved)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
            text = str(e).strip()
            why = f"{type(e).__name__}: {text.splitlines()[0] if text else ''} (written with other settings?)"
    if why is not None:
        raise CheckpointError(f"{source}: cannot resume this run from it: {why}")


def resumed_line(st: TrainState, pos: dict | None) -> str:
    if pos is None:
        return f"resumed from the checkpoint of epoch {st.epoch} (run step {st.steps_done})"
    world = dist.world_size()
    how = (
        "the same workers: an exact continuation"
        if pos["world"] == world
        else f"now {world}: the bank re-sharded, the epoch's untrained samples split over {world}"
    )
    return (
        f"resumed inside epoch {pos['epoch']} at its step {pos['step']} (run step {st.steps_done}) from a "
        f"checkpoint of {pos['world']} worker(s); {how}"
    )


def compute_line(cfg: Config, st: TrainState, data: Data, device: torch.device) -> str:
    """How the model runs: the device, the resolved precision, the memory format, where images are decoded."""
    fmt = "channels-last" if data.memory_format == torch.channels_last else "contiguous"
    where = f"on the {device.type} device" if cfg.data.decode == "gpu" else "by the loader"
    step = " (lagged MSLC step)" if cfg.mslc.lagged and cfg.meta.method == "mslc" else ""
    return f"compute: {device}, {st.amp.precision} model passes{step}, {fmt} memory format, images decoded {where}"


def setup_threads(cfg: Config, world_size: int) -> None:
    n = cfg.scale.threads or max(1, (os.cpu_count() or 1) // world_size)
    torch.set_num_threads(n)


def console(line: str) -> None:
    """One line to the worker's stdout, which Ray forwards to the driver once
    (Ray Train's patched ``print`` would emit it twice)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def quiet_ray_reports() -> None:
    """Keep Ray Train's per-report INFO lines out of the user's console: "Reporting training
    result ..." (the whole metrics dict, every epoch, from every rank) and "Checkpoint
    successfully created at: ..." (every checkpoint; they are listed in the run directory)."""
    import logging

    try:
        from ray.train.v2._internal.execution import context, storage
    except ImportError:  # internal modules: nothing to quiet if they moved
        return
    context.logger.setLevel(logging.WARNING)
    storage.logger.setLevel(logging.WARNING)


def train_loop_per_worker(config: dict, *, extras: tuple[outputs.OutputExtra, ...] = ()) -> None:
    """Ray Train's entry: the typed config back from its dict, on the first line.
    ``extras``: see :func:`run` (:func:`pipeline.worker.train_loop_per_worker` passes the review's)."""
    cfg = Config.from_dict(config)
    import ray.train.torch

    quiet_ray_reports()

    device = ray.train.torch.get_device()
    run_dir = RunDir.of(cfg.run.storage_path, cfg.run.name)
    run(
        cfg,
        checkpoint.RayReporter(run_dir.path, resume_from=cfg.run.resume_from or None),
        device,
        log=console,
        extras=extras,
    )
