"""One epoch of a worker: its batches (the epoch's plan, this rank's stream, re-batching and
pinning), the method's step on each, the running sums, the divergence watch, progress lines,
the injected crash of recovery tests and checkpoints inside the epoch."""

from __future__ import annotations

import os
import sys
import time

import torch

from mslc import dist
from pipeline.errors import DivergedError, PipelineError
from pipeline.rundir import RunDir
from pipeline.training.data import assign, device_decode, streaming
from pipeline.training.methods import registry as methods
from pipeline.training.methods.state import Data, TrainState, normalize
from pipeline.training.run import position
from pipeline.training.run.position import EpochTotals
from pipeline.training.settings.config import Config


def epoch_seed(cfg: Config, epoch: int) -> int:
    """The seed of an epoch's shard shuffle and shuffle buffer (the same on every rank)."""
    return cfg.run.seed * 1_000_003 + epoch


def build_plan(cfg: Config, data: Data, epoch: int, *, todo=None) -> assign.EpochPlan:
    """The epoch's shard assignment and step count (``todo``: the samples still to train after
    a resume at another worker count)."""
    return assign.plan_epoch(
        data.manifest,
        data.shard_dir,
        world=dist.world_size(),
        seed=epoch_seed(cfg, epoch),
        batch_size=cfg.optim.batch_size,
        todo=todo,
    )


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


def train_batches(
    cfg: Config,
    data: Data,
    epoch: int,
    plan: assign.EpochPlan,
    steps: int,
    *,
    exclude=None,
    device: torch.device | None = None,
):
    """This rank's ``steps`` training batches ``(x, y, idx)`` of the epoch: its parts of the
    plan, streamed (no collective, no wait on other ranks: every rank takes ``steps``, the
    plan's count). A rank whose stream comes up short (bad samples skipped with
    ``data.bad_samples=skip``) repeats its last batch, with a warning, to keep step.
    ``exclude`` ((N,) bool): samples already trained on this epoch (a mid-epoch resume).
    With ``data.decode=gpu`` the loader reads encoded images and ``x`` comes decoded and
    augmented on ``device`` (:mod:`pipeline.training.data.device_decode`)."""
    rank = dist.rank()
    seed = epoch_seed(cfg, epoch)
    device = device or torch.device("cpu")
    on_device = cfg.data.decode == "gpu"
    ds = streaming.stream(
        plan.parts[rank],
        num_classes=data.num_classes,
        shuffle_seed=seed,
        shuffle_buffer=cfg.data.shuffle_buffer,
        channels=data.channels,
        transform=data.train_tf,
        bad_samples=cfg.data.bad_samples,
        exclude=exclude,
        raw=on_device,
        labels=data.labels,
    )
    cuda, rebatching = device.type == "cuda", cfg.data.loader_workers > 1
    batches = streaming.loader(
        ds,
        batch_size=cfg.optim.batch_size,
        workers=cfg.data.loader_workers,
        seed=seed * 4099 + rank,
        collate_fn=streaming.collate_raw if on_device else None,
        pin_memory=cuda and not rebatching,
    )
    if rebatching:  # torch.cat of pinned batches is pageable again: pin what comes out instead
        batches = rebatch(batches, cfg.optim.batch_size)
        if cuda:
            batches = (pin_batch(b) for b in batches)
    if on_device:
        batches = device_decode.device_batches(
            batches,
            device=device,
            channels=data.channels,
            transform=data.train_tf,
            seed=seed * 4099 + rank,
            bad_samples=cfg.data.bad_samples,
        )
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
        print(
            f"warning: rank {rank}'s epoch {epoch} stream ended {steps - taken} step(s) early (bad samples "
            "skipped); repeating its last batch to keep step with the other ranks",
            file=sys.stderr,
            flush=True,
        )
        for _ in range(steps - taken):
            yield last


def make_batch(
    st: TrainState, data: Data, device: torch.device, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None
) -> methods.Batch:
    """A step's :class:`methods.Batch`: the images normalized on ``device``, and the meta set's
    samplers (and the trusted part's, where there is one) as callables giving normalized batches."""

    def draw(sampler):
        def batch():
            xm, ym = sampler.next()
            return normalize(xm, data, device), ym

        return batch

    return methods.Batch(
        normalize(x, data, device),
        y.to(device, non_blocking=True),
        idx,
        draw(st.meta),
        None if st.trusted is None else draw(st.trusted),
    )


def maybe_crash(cfg: Config, st: TrainState, run_dir: RunDir) -> None:
    """``scale.crash_at_step``: the last rank dies once at that step (for fault-tolerance tests).

    The marker it leaves names its Ray node. With ``MSLC_CRASH_HOLD_S`` in its environment
    it first waits that long, so that a test can take its node away as a spot preemption
    would (the node's resources leave the cluster with it, and an elastic group shrinks)."""
    marker = run_dir.crash_marker
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
        modules = {
            "classifier": st.model,
            **({} if st.corrector is None else {"corrector (θ)": st.corrector}),
            **{f"method's {k}": v for k, v in vars(st.method).items() if isinstance(v, torch.nn.Module)},
        }
        finite = torch.stack(
            [torch.stack([torch.isfinite(p).all() for p in m.parameters()]).all() for m in modules.values()]
        ).cpu()
        first = self.first.cpu()
        problems = [f"non-finite {q} at step {int(s)}" for q, s in zip(self.QUANTITIES, first) if s >= 0]
        problems += [f"non-finite {name} parameters" for name, ok in zip(modules, finite) if not ok]
        if dist.all_min(0 if problems else 1) == 0:
            what = "; ".join(problems) or "another rank's training diverged"
            kept = f"the last good checkpoint is epoch {st.epoch}" if st.epoch else "no checkpoint was written"
            raise DivergedError(
                f"training diverged in epoch {epoch} (by step {st.steps_done}): {what}. "
                f"Nothing was exported; {kept} (try a lower optim.lr)"
            )


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
        self.log(
            f"  epoch {self.epoch}/{self.epochs} step {steps}/{self.total}: {ips:.0f} img/s, loss {loss:.4f}, "
            f"epoch ETA {_clock(left * pace)}, run ETA {_clock((left + (self.epochs - self.epoch) * self.total) * pace)}"
        )
        if self.tb is not None:
            self.tb.writer.add_scalar("step/train_loss", loss, global_step)
            self.tb.writer.add_scalar("step/images_per_s", ips, global_step)


def train_epoch(
    cfg: Config,
    st: TrainState,
    data: Data,
    epoch: int,
    device: torch.device,
    run_dir: RunDir,
    progress: EpochProgress | None = None,
    *,
    resume: dict | None = None,
    saver: "MidEpochSaver | None" = None,
) -> dict:
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
    totals = at.totals  # on the device: no sync per step
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
        meta_loss = res.meta_loss.to(device=device, dtype=torch.float64, non_blocking=True)
        totals.add(res.loss, meta_loss, len(y))
        sums["n"] += len(y)
        sums["steps"] += 1
        st.steps_done += 1
        if at.seen is not None and idx is not None:
            at.seen[idx.numpy()] = True
        watch.update(st.steps_done, res.loss, meta_loss)
        if progress is not None:
            progress.step(sums["steps"], sums["n"], totals.loss_sum, st.steps_done)
        if sums["steps"] % DIVERGENCE_CHECK_EVERY == 0:
            watch.check(st, epoch)
        if saver is not None and saver.clock.due(st.steps_done, sums["steps"]) and sums["steps"] < last_step:
            watch.check(st, epoch)  # never save a diverged state
            at.steps, at.n = sums["steps"], sums["n"]
            saver.save(st, epoch, at, totals)
    watch.check(st, epoch)
    means = totals.means(sums["n"])  # collective: the epoch's means over every rank
    if means.samples == 0:
        raise PipelineError(f"{data.shard_dir}: epoch {epoch} streamed no training batch")
    method.end_epoch(st.bank, phase, epoch)
    st.bank.end_epoch()
    st.sched.step()
    return {
        "phase": phase,
        "train_loss": means.train_loss,
        "meta_loss": means.meta_loss,
        "samples": means.samples * dist.world_size(),
        "steps": sums["steps"],
        **method.epoch_stats(),
    }


class MidEpochSaver:
    """Checkpoints inside an epoch, every ``run.checkpoint_every_steps`` steps or
    ``run.checkpoint_every_min`` minutes: the state plus the position
    (:func:`pipeline.training.run.position.record`); every rank calls :meth:`save` together."""

    def __init__(self, cfg: Config, reporter, log=None) -> None:
        self.clock = position.CheckpointClock(
            cfg.run.checkpoint_every_steps, cfg.run.checkpoint_every_min, check_every=DIVERGENCE_CHECK_EVERY
        )
        self.reporter, self.log = reporter, log

    def save(self, st: TrainState, epoch: int, at: position.EpochStart, totals: EpochTotals) -> None:
        state = st.state_dict()
        state["position"] = position.record(st, epoch, at, totals)
        self.reporter.report(
            {"epoch": st.epoch, "in_epoch": epoch, "step": at.steps, "steps_done": st.steps_done},
            state,
            epoch,
            step=at.steps,
        )
        self.clock.saved()
        if self.log is not None:
            self.log(f"  checkpoint: epoch {epoch} step {at.steps} (run step {st.steps_done})")
