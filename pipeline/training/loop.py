"""The per-worker training loop: warm-up with CE, then MSLC steps, per-epoch outputs.

``train_loop_per_worker`` is what Ray Train runs; :func:`run` is the same loop
callable in one plain process (benchmarks and tests).
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mslc import dist
from mslc.metrics import clean_split_calibration
from pipeline.errors import CheckpointError, DivergedError, PipelineError
from pipeline.review import report as review
from pipeline.storage import atomic_torch_save
from pipeline.training import assign, checkpoint, device_decode, failures, methods, outputs, position, streaming
from pipeline.training.config import Config
from pipeline.training.evaluate import bank_metrics, evaluate, predict, progress_line
from pipeline.training.state import Data, TrainState, build_data, build_state, normalize


def epoch_seed(cfg: Config, epoch: int) -> int:
    """The seed of an epoch's shard shuffle and shuffle buffer (the same on every rank)."""
    return cfg.run.seed * 1_000_003 + epoch


def build_plan(cfg: Config, data: Data, epoch: int, *, todo=None) -> assign.EpochPlan:
    """The epoch's shard assignment and step count (``todo``: the samples still to train after
    a resume at another worker count)."""
    return assign.plan_epoch(data.manifest, data.shard_dir, world=dist.world_size(), seed=epoch_seed(cfg, epoch),
                             batch_size=cfg.optim.batch_size, todo=todo)


def _cat(fields: tuple) -> torch.Tensor | list:
    """One batch field from several batches: tensors concatenated, lists joined."""
    return [v for f in fields for v in f] if isinstance(fields[0], list) else torch.cat(fields)


def rebatch(batches, batch_size: int):
    """Batches of exactly ``batch_size`` (the last may be short) from loader processes' batches,
    each of which ends its own part with a short one (fields are tensors or lists)."""
    held: list = []
    size = 0
    for b in batches:
        held.append(b)
        size += len(b[1])
        while size >= batch_size:
            cat = [_cat(f) for f in zip(*held)]
            yield tuple(f[:batch_size] for f in cat)
            held = [tuple(f[batch_size:] for f in cat)] if size > batch_size else []
            size -= batch_size
    if size:
        yield tuple(_cat(f) for f in zip(*held))


def pin_batch(batch: tuple) -> tuple:
    """Every tensor of ``batch`` in page-locked memory (``non_blocking`` copies to the GPU then
    overlap); lists (encoded images) as they are."""
    return tuple(f.pin_memory() if torch.is_tensor(f) else f for f in batch)


def train_batches(cfg: Config, data: Data, epoch: int, plan: assign.EpochPlan, steps: int, *, exclude=None,
                  device: torch.device | None = None):
    """This rank's ``steps`` training batches ``(x, y, idx)`` of the epoch: its parts of the
    plan, streamed (no collective, no wait on other ranks: every rank takes ``steps``, the
    plan's count). A rank whose stream comes up short (bad samples skipped with
    ``data.bad_samples=skip``) repeats its last batch, with a warning, to keep step.
    ``exclude`` ((N,) bool): samples already trained on this epoch (a mid-epoch resume).
    With ``data.decode=gpu`` the loader reads encoded images and ``x`` comes decoded and
    augmented on ``device`` (:mod:`pipeline.training.device_decode`)."""
    rank = dist.rank()
    seed = epoch_seed(cfg, epoch)
    device = device or torch.device("cpu")
    on_device = cfg.data.decode == "gpu"
    ds = streaming.stream(plan.parts[rank], num_classes=data.num_classes, shuffle_seed=seed,
                          shuffle_buffer=cfg.data.shuffle_buffer, channels=data.channels, transform=data.train_tf,
                          bad_samples=cfg.data.bad_samples, exclude=exclude, raw=on_device,
                          labels=data.labels)
    cuda, rebatching = device.type == "cuda", cfg.data.loader_workers > 1
    batches = streaming.loader(ds, batch_size=cfg.optim.batch_size, workers=cfg.data.loader_workers,
                               seed=seed * 4099 + rank, collate_fn=streaming.collate_raw if on_device else None,
                               pin_memory=cuda and not rebatching)
    if rebatching:  # torch.cat of pinned batches is pageable again: pin what comes out instead
        batches = rebatch(batches, cfg.optim.batch_size)
        if cuda:
            batches = (pin_batch(b) for b in batches)
    if on_device:
        batches = device_decode.device_batches(batches, device=device, channels=data.channels,
                                               transform=data.train_tf, seed=seed * 4099 + rank,
                                               bad_samples=cfg.data.bad_samples)
    taken, last = 0, None
    for batch in batches:
        if taken == steps:
            return
        if len(batch[1]) < 2:
            break
        last = batch
        taken += 1
        yield batch
    if taken < steps:
        if last is None:
            raise PipelineError(f"{data.shard_dir}: rank {rank} streamed no training sample in epoch {epoch}")
        print(f"warning: rank {rank}'s epoch {epoch} stream ended {steps - taken} step(s) early (bad samples "
              "skipped); repeating its last batch to keep step with the other ranks", file=sys.stderr, flush=True)
        for _ in range(steps - taken):
            yield last


def make_batch(st: TrainState, data: Data, device: torch.device, x: torch.Tensor, y: torch.Tensor,
               idx: torch.Tensor | None) -> methods.Batch:
    """A step's :class:`methods.Batch`: the images normalized on ``device``, and the meta set's
    samplers (and the trusted part's, where there is one) as callables giving normalized batches."""
    def draw(sampler):
        def batch():
            xm, ym = sampler.next()
            return normalize(xm, data, device), ym
        return batch

    return methods.Batch(normalize(x, data, device), y.to(device, non_blocking=True), idx, draw(st.meta),
                         None if st.trusted is None else draw(st.trusted))


def maybe_crash(cfg: Config, st: TrainState, run_dir: Path) -> None:
    """``scale.crash_at_step``: the last rank dies once at that step (for fault-tolerance tests).

    The marker it leaves names its Ray node. With ``MSLC_CRASH_HOLD_S`` in its environment
    it first waits that long, so that a test can take its node away as a spot preemption
    would (the node's resources leave the cluster with it, and an elastic group shrinks)."""
    marker = run_dir / ".crash-injected"
    if st.steps_done == cfg.scale.crash_at_step and dist.rank() == dist.world_size() - 1 and not marker.exists():
        ray = sys.modules.get("ray")
        node = ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else "-"
        marker.write_text(f"rank {dist.rank()} crashed at step {st.steps_done} on node {node}\n")
        sys.stdout.flush()
        time.sleep(float(os.environ.get("MSLC_CRASH_HOLD_S", "0")))
        os._exit(1)


DIVERGENCE_CHECK_EVERY = 50  # steps between reads of the on-device divergence record (one host sync each)


class DivergenceWatch:
    """Records on the device the first step whose training loss was non-finite or whose
    meta loss was infinite (a NaN meta loss means "no meta step" in :class:`StepResult`;
    a NaN meta-gradient shows up as non-finite θ), without a host sync per step;
    :meth:`check` reads it, with the finiteness of every trained module's parameters (a
    non-finite gradient makes them non-finite), every :data:`DIVERGENCE_CHECK_EVERY` steps
    and at the epoch's end, and all ranks agree before any raises :class:`DivergedError`."""

    QUANTITIES = ("training loss", "meta loss")

    def __init__(self, device: torch.device) -> None:
        self.first = torch.full((2,), -1, dtype=torch.int64, device=device)

    def update(self, step: int, loss: torch.Tensor, meta_loss: torch.Tensor) -> None:
        """``loss``, ``meta_loss``: () tensors on the watch's device."""
        bad = torch.stack([~torch.isfinite(loss.detach()), torch.isinf(meta_loss)])
        self.first = torch.where(bad & (self.first < 0), step, self.first)

    def check(self, st: TrainState, epoch: int) -> None:
        modules = {"classifier": st.model, "corrector (θ)": st.corrector,
                   **{f"method's {k}": v for k, v in vars(st.method).items() if isinstance(v, torch.nn.Module)}}
        finite = torch.stack([torch.stack([torch.isfinite(p).all() for p in m.parameters()]).all()
                              for m in modules.values()]).cpu()
        first = self.first.cpu()
        problems = [f"non-finite {q} at step {int(s)}" for q, s in zip(self.QUANTITIES, first) if s >= 0]
        problems += [f"non-finite {name} parameters" for name, ok in zip(modules, finite) if not ok]
        if dist.all_min(0 if problems else 1) == 0:
            what = "; ".join(problems) or "another rank's training diverged"
            kept = f"the last good checkpoint is epoch {st.epoch}" if st.epoch else "no checkpoint was written"
            raise DivergedError(f"training diverged in epoch {epoch} (by step {st.steps_done}): {what}. "
                                f"Nothing was exported; {kept} (try a lower optim.lr)")


def _clock(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class EpochProgress:
    """Rank 0's progress inside an epoch: every ``run.log_every_s`` seconds a console line
    (step k/K, images/s over all ranks, the mean training loss so far, the ETA of the epoch
    and of the run at this epoch's pace) and step-level TensorBoard scalars. It reads the
    loss (one host sync) only when it reports."""

    def __init__(self, cfg: Config, epoch: int, log, tb=None) -> None:
        world = dist.world_size()
        self.total = 0  # the epoch's steps: train_epoch sets it from the epoch's plan
        self.every, self.epoch, self.epochs, self.world = cfg.run.log_every_s, epoch, cfg.optim.epochs, world
        self.log, self.tb = log, tb
        self.start = self.last = time.time()
        self.base = (0, 0)  # (steps, samples) taken before this process started the epoch (a resume)

    def step(self, steps: int, samples: int, loss_sum: torch.Tensor, global_step: int) -> None:
        now = time.time()
        if not self.every or now - self.last < self.every or steps >= self.total or steps <= self.base[0]:
            return
        self.last = now
        pace = (now - self.start) / (steps - self.base[0])  # seconds per step
        ips = (samples - self.base[1]) * self.world / (now - self.start)
        loss = float(loss_sum) / samples
        left = self.total - steps
        self.log(f"  epoch {self.epoch}/{self.epochs} step {steps}/{self.total}: {ips:.0f} img/s, loss {loss:.4f}, "
                 f"epoch ETA {_clock(left * pace)}, run ETA {_clock((left + (self.epochs - self.epoch) * self.total) * pace)}")
        if self.tb is not None:
            self.tb.writer.add_scalar("step/train_loss", loss, global_step)
            self.tb.writer.add_scalar("step/images_per_s", ips, global_step)


def train_epoch(cfg: Config, st: TrainState, data: Data, epoch: int, device: torch.device, run_dir: Path,
                progress: EpochProgress | None = None, *, resume: dict | None = None,
                saver: "MidEpochSaver | None" = None) -> dict:
    """One epoch of the run's method (``st.method``); returns its phase, mean train and
    meta loss, samples and steps. ``progress`` (rank 0) reports inside the epoch;
    ``resume`` (a checkpoint's position in this epoch) continues it; ``saver`` writes
    checkpoints inside it."""
    method: methods.Method = st.method
    phase = method.phase(epoch)
    exclude = None
    if resume is None:
        position.reset_samplers(st, cfg.run.seed, epoch)
        method.start_epoch(st, data, phase)  # a resumed epoch has its start in the method's state
        at = position.fresh(len(data.labels), device, track=saver is not None)
        plan = build_plan(cfg, data, epoch)
        steps = plan.steps
    else:
        at = position.restore(resume, st, seed=cfg.run.seed, device=device)
        exclude = at.seen.copy()  # the stream leaves these out
        if resume["world"] == dist.world_size():  # the same parts, less what each rank took
            plan = build_plan(cfg, data, epoch)
            steps = plan.steps - at.steps
        else:  # the untrained samples, split afresh over this group
            plan = build_plan(cfg, data, epoch, todo=~exclude)
            steps = plan.steps
        if saver is None:
            at.seen = None  # nothing more to record
    st.model.train()
    sums = {"n": at.n, "steps": at.steps}
    totals = at.totals  # Σ loss·n, Σ meta loss·n, meta samples: no sync per step
    last_step = at.steps + steps  # no checkpoint inside the epoch at its last step: its end saves one
    if progress is not None:
        progress.base, progress.total = (at.steps, at.n), last_step
    watch = DivergenceWatch(device)

    stream = train_batches(cfg, data, epoch, plan, steps, exclude=exclude, device=device)
    for x, y, idx in method.batches(st, data, phase, stream, steps=steps):
        if cfg.scale.crash_at_step:
            maybe_crash(cfg, st, run_dir)
        batch = make_batch(st, data, device, x, y, idx)
        res = method.step(st, data, phase, batch)
        method.write_bank(st.bank, phase, epoch, batch, res)
        n, meta_loss = len(y), res.meta_loss.to(device=device, dtype=torch.float64, non_blocking=True)
        has_meta = ~torch.isnan(meta_loss)
        totals += torch.stack([res.loss.to(torch.float64) * n, torch.where(has_meta, meta_loss * n, 0.0),
                               has_meta * float(n)])
        sums["n"] += n
        sums["steps"] += 1
        st.steps_done += 1
        if at.seen is not None and idx is not None:
            at.seen[idx.numpy()] = True
        watch.update(st.steps_done, res.loss, meta_loss)
        if progress is not None:
            progress.step(sums["steps"], sums["n"], totals[0], st.steps_done)
        if sums["steps"] % DIVERGENCE_CHECK_EVERY == 0:
            watch.check(st, epoch)
        if saver is not None and saver.clock.due(st.steps_done, sums["steps"]) and sums["steps"] < last_step:
            watch.check(st, epoch)  # never save a diverged state
            at.steps, at.n = sums["steps"], sums["n"]
            saver.save(st, epoch, at, totals)
    watch.check(st, epoch)
    totals = torch.cat([totals.cpu(), torch.tensor([float(sums["n"])], dtype=torch.float64)])
    dist.all_reduce_mean_([totals])
    sums["loss"], sums["meta_loss"], sums["n"] = float(totals[0]), float(totals[1]), round(float(totals[3]))
    meta_n = float(totals[2])
    if sums["n"] == 0:
        raise PipelineError(f"{data.shard_dir}: epoch {epoch} streamed no training batch")
    method.end_epoch(st.bank, phase, epoch)
    st.bank.end_epoch()
    st.sched.step()
    n = sums["n"]
    return {"phase": phase, "train_loss": sums["loss"] / n,
            "meta_loss": sums["meta_loss"] / meta_n if meta_n else float("nan"),
            "samples": n * dist.world_size(), "steps": sums["steps"], **method.epoch_stats()}


class MidEpochSaver:
    """Checkpoints inside an epoch, every ``run.checkpoint_every_steps`` steps or
    ``run.checkpoint_every_min`` minutes: the state plus the position
    (:func:`pipeline.training.position.record`); every rank calls :meth:`save` together."""

    def __init__(self, cfg: Config, reporter, log=None) -> None:
        self.clock = position.CheckpointClock(cfg.run.checkpoint_every_steps, cfg.run.checkpoint_every_min,
                                              check_every=DIVERGENCE_CHECK_EVERY)
        self.reporter, self.log = reporter, log

    def save(self, st: TrainState, epoch: int, at: position.EpochStart, totals: torch.Tensor) -> None:
        state = st.state_dict()
        state["position"] = position.record(st, epoch, at, totals)
        self.reporter.report({"epoch": st.epoch, "in_epoch": epoch, "step": at.steps, "steps_done": st.steps_done},
                             state, epoch, step=at.steps)
        self.clock.saved()
        if self.log is not None:
            self.log(f"  checkpoint: epoch {epoch} step {at.steps} (run step {st.steps_done})")


def is_best(history: list[dict]) -> bool:
    """Whether the last epoch has the best clean-validation accuracy so far (ties: the
    earliest stays best, as in :func:`pipeline.training.outputs.summarize`)."""
    vals = [-1.0 if h["val_acc"] is None or math.isnan(h["val_acc"]) else h["val_acc"] for h in history]
    return all(vals[-1] > v for v in vals[:-1])


def resume_state(st: TrainState, saved: dict, data: Data, *, source: str) -> None:
    """Load ``saved`` into ``st``, or raise :class:`CheckpointError` naming ``source`` and
    what differs (another model, class count or data size) rather than torch's text."""
    why = checkpoint.state_mismatch(saved, model=st.model.state_dict(), num_samples=len(data.labels),
                                    num_classes=data.num_classes)
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
    how = ("the same workers: an exact continuation" if pos["world"] == world else
           f"now {world}: the bank re-sharded, the epoch's untrained samples split over {world}")
    return (f"resumed inside epoch {pos['epoch']} at its step {pos['step']} (run step {st.steps_done}) from a "
            f"checkpoint of {pos['world']} worker(s); {how}")


def compute_line(cfg: Config, st: TrainState, data: Data, device: torch.device) -> str:
    """How the model runs: the device, the resolved precision, the memory format, where images are decoded."""
    fmt = "channels-last" if data.memory_format == torch.channels_last else "contiguous"
    where = f"on the {device.type} device" if cfg.data.decode == "gpu" else "by the loader"
    step = " (lagged MSLC step)" if cfg.meta.lagged and cfg.meta.method == "mslc" else ""
    return f"compute: {device}, {st.amp.precision} model passes{step}, {fmt} memory format, images decoded {where}"


def setup_threads(cfg: Config, world_size: int) -> None:
    n = cfg.scale.threads or max(1, (os.cpu_count() or 1) // world_size)
    torch.set_num_threads(n)


def run(cfg: Config, reporter, device: torch.device | None = None, *, log=print) -> dict:
    """Train for ``cfg.optim.epochs`` epochs; write outputs to ``storage_path/name``.

    Returns ``{'run_dir', 'metrics', 'corrected_labels', 'tensorboard', 'summary'}``. An
    exception on any rank stops every rank (:class:`pipeline.training.failures.FailureWatch`).
    """
    with failures.FailureWatch():
        return _run(cfg, reporter, device, log=log)


def _run(cfg: Config, reporter, device: torch.device | None = None, *, log=print) -> dict:
    device = device or torch.device("cpu")
    setup_threads(cfg, reporter.world_size)
    run_dir = Path(cfg.run.storage_path) / cfg.run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    data = build_data(cfg, device)
    lead = reporter.rank == 0
    assign.check_world(data.manifest, dist.world_size(), shard_dir=str(data.shard_dir), log=log if lead else None)
    st = build_state(cfg, data, device)
    st.method = methods.build_method(cfg, device)  # last: MW-Net's weight net draws from the RNG after the model
    if lead:
        log(compute_line(cfg, st, data, device))
    saved = reporter.restore()
    resume = None
    if saved is not None:
        resume_state(st, saved, data, source=getattr(reporter, "source", None) or "the checkpoint")
        resume = saved.get("position")
        log(resumed_line(st, resume))
    saver = MidEpochSaver(cfg, reporter, log if lead else None) if cfg.run.mid_epoch_checkpoints else None
    tb = outputs.TensorBoardLog(run_dir, data.manifest["classes"]) if lead and cfg.run.tensorboard else None
    known = data.known
    if tb and known.any() and st.epoch == 0:
        tb.confusion("given_vs_true", data.true[known], data.labels[known], 0)
    extra = {"config": cfg.to_dict(), "shard_dir": str(data.shard_dir),
             "noise": {k: data.manifest["noise"][k] for k in ("kind", "rate", "realized_rate")}}
    for epoch in range(st.epoch + 1, cfg.optim.epochs + 1):
        t0 = time.time()
        lr = st.opt_w.param_groups[0]["lr"]
        progress = EpochProgress(cfg, epoch, log, tb) if lead else None
        stats = train_epoch(cfg, st, data, epoch, device, run_dir, progress, saver=saver,
                            resume=resume if resume is not None and resume["epoch"] == epoch else None)
        dist.average_buffers_(st.model)  # one set of batch-norm statistics to evaluate and save
        nan = float("nan")  # only rank 0 evaluates; the others' records are not reported anywhere
        record = {"epoch": epoch, "lr": lr, **stats,
                  "val_samples": data.manifest["splits"].get("val", {}).get("count", 0),
                  "val_acc": evaluate(st.model, data, "val", device, cfg_bad_samples=cfg.data.bad_samples)
                  if lead else nan,
                  "test_acc": evaluate(st.model, data, "test", device, cfg_bad_samples=cfg.data.bad_samples)
                  if lead else nan}
        record["best_val_acc"] = max([record["val_acc"], *(h["val_acc"] for h in st.history)])  # so far (Tune ranks by it)
        label_stats, table = bank_metrics(st.bank, data)
        record.update(label_stats)
        corrected = table["y_tilde"].argmax(1)
        record.update(outputs.flag_counts(corrected, data.labels, None if st.corrected is None else st.corrected.numpy()))
        st.corrected = torch.from_numpy(corrected.astype(np.int32))
        record["epoch_seconds"] = time.time() - t0
        st.epoch = epoch
        st.history.append(record)
        if lead and outputs.labels_epoch(st.history) == epoch:
            st.labels = {"epoch": epoch, **{k: torch.from_numpy(table[k].copy())
                                            for k in ("y_tilde", "y_hat", "alpha", "beta")}}
        if lead:
            log(progress_line(cfg, record))
            outputs.write_metrics(run_dir, st.history, extra)
            if tb:
                tb.epoch(record, alpha=table["alpha"], beta=table["beta"], is_noisy=data.is_noisy, known=known)
                if known.any():
                    tb.confusion("corrected_vs_true", data.true[known], table["y_tilde"][known].argmax(1), epoch)
                grid = review.suspects_grid(data.shard_dir, data.manifest, data.labels, table["y_tilde"])
                if grid is not None:
                    tb.image("suspected_errors", grid, epoch)
        reporter.report(record, st.state_dict(), epoch, best=cfg.run.keep_best and is_best(st.history))
        if saver is not None:
            saver.clock.saved()
    result = {"run_dir": str(run_dir), "summary": outputs.summarize(st.history)}
    if dist.all_min(0 if lead and st.labels is None else 1) == 0:  # a checkpoint from before labels were kept
        st.labels = {"epoch": st.epoch, **{k: torch.from_numpy(v) for k, v in st.bank.table().items()}}
    if lead:
        t = {k: v.numpy() if torch.is_tensor(v) else v for k, v in st.labels.items()}
        log(f"exported labels: epoch {t['epoch']} (the latest within one standard error of the best clean-validation "
            "accuracy after the warm-up)")
        transition = methods.transition_estimate(st)
        result["corrected_labels"] = str(outputs.write_corrected_labels(
            run_dir / "corrected_labels.parquet", keys=data.keys, given=data.labels, soft=t["y_tilde"],
            alpha=t["alpha"], beta=t["beta"], true=data.true, epoch=t["epoch"], y_hat=t.get("y_hat"),
            transition=transition, classes=data.manifest["classes"], soft_rows=cfg.run.export_soft,
            calibration=val_calibration(cfg, st, data, device, transition)))
        result["metrics"] = str(outputs.write_metrics(run_dir, st.history, extra))
        atomic_torch_save(st.model.state_dict(), run_dir / "model.pt")
        result["model"] = str(run_dir / "model.pt")
        result.update(write_review(cfg, run_dir, data, log))
        if tb:
            tb.close()
            result["tensorboard"] = str(run_dir / "tensorboard")
    return result


def val_calibration(cfg: Config, st: TrainState, data: Data, device: torch.device, transition) -> list[dict] | None:
    """How the flags' estimated precision compares with the truth on the clean validation split
    (:func:`mslc.metrics.clean_split_calibration`), or None without a transition estimate, a
    validation split or ``run.calibrate``."""
    if transition is None or not cfg.run.calibrate:
        return None
    pv = predict(st.model, data, "val", device, cfg_bad_samples=cfg.data.bad_samples)
    return None if pv is None else clean_split_calibration(pv[0], pv[1], transition)


def write_review(cfg: Config, run_dir: Path, data: Data, log) -> dict:
    """``relabel.csv`` and, unless ``run.report=false``, the review page, from the labels
    just exported. A page that cannot be made (a training shard gone since it was read) is
    logged, not fatal: the model and the labels are already written."""
    run = review.load_run(run_dir, data.shard_dir)
    budget = review.write_estimates(run, target=cfg.run.relabel_precision, threshold=cfg.run.relabel_threshold)
    out = {"relabel": str(review.write_relabel(run, threshold=budget["relabel_threshold"])), "budget": budget}
    if cfg.run.report:
        try:
            out["report"] = str(review.write_report(run, top=cfg.run.report_top, log=log))
        except PipelineError as e:
            log(f"report not written: {e}")
    return out


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


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's entry: the typed config back from its dict, on the first line."""
    cfg = Config.from_dict(config)
    import ray.train.torch

    quiet_ray_reports()

    device = ray.train.torch.get_device()
    run_dir = Path(cfg.run.storage_path) / cfg.run.name
    run(cfg, checkpoint.RayReporter(run_dir, resume_from=cfg.run.resume_from or None), device, log=console)
