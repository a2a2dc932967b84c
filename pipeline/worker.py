"""The per-worker training loop: warm-up with CE, then MSLC steps, per-epoch outputs.

``train_loop_per_worker`` is what Ray Train runs; :func:`run` is the same loop
callable in one plain process (benchmarks and tests).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mslc import dist
from mslc.bank import LocalBank, ShardedBank, SoftLabelBank
from mslc.corrector import Corrector
from mslc.metrics import corrected_label_accuracy, group_mean
from mslc.models import build_model
from pipeline import checkpoint, methods, outputs, shards, transforms
from pipeline.config import Config
from pipeline.errors import PipelineError


@dataclass
class Data:
    """What a worker knows of the data besides the streamed training batches.

    labels : (N,) int64 given labels; true : (N,) int64 (-1 unknown); keys : (N,)
    meta_x : (M, C, H, W) uint8 after the evaluation transform; meta_y : (M,) int64;
    mean, std : (1, C, 1, 1); train_tf / eval_tf: per-sample transforms (or None);
    size : the side of the images the model sees.
    """

    shard_dir: str
    manifest: dict
    labels: np.ndarray
    true: np.ndarray
    keys: np.ndarray
    meta_x: torch.Tensor
    meta_y: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    train_tf: object = None
    eval_tf: object = None
    size: int = 0

    @property
    def num_classes(self) -> int:
        return self.manifest["num_classes"]

    @property
    def channels(self) -> int:
        return self.manifest["image"]["channels"]

    @property
    def known(self) -> np.ndarray:
        """(N,) bool: the true label is known (all of a synthetic-noise set; a part of Clothing1M)."""
        return self.true >= 0

    @property
    def is_noisy(self) -> np.ndarray:
        """(N,) bool: the given label is known to be wrong."""
        return (self.labels != self.true) & self.known


class MetaSampler:
    """Seeded mini-batches of the clean meta set, reshuffled every pass; :meth:`reset`
    reseeds it (each epoch, per rank) so a resumed run draws the same batches."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> None:
        self.x, self.y = x, y
        self.batch_size = min(batch_size, len(y))
        self.reset(0)

    def reset(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.perm, self.pos = torch.randperm(len(self.y), generator=self.gen), 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pos + self.batch_size > len(self.perm):
            self.perm, self.pos = torch.randperm(len(self.y), generator=self.gen), 0
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return self.x[idx], self.y[idx]


@dataclass
class State:
    model: nn.Module
    opt_w: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    corrector: Corrector
    opt_theta: torch.optim.Optimizer
    bank: SoftLabelBank
    meta: MetaSampler
    method: methods.MethodState = field(default_factory=methods.MethodState)
    epoch: int = 0
    steps_done: int = 0
    history: list[dict] = field(default_factory=list)

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(), "opt_w": self.opt_w.state_dict(), "sched": self.sched.state_dict(),
            "corrector": self.corrector.state_dict(), "opt_theta": self.opt_theta.state_dict(),
            "bank": self.bank.state_dict(), "epoch": self.epoch, "steps_done": self.steps_done,
            "history": self.history, "rng": checkpoint.rng_state(), "method": self.method.state_dict(),
        }

    def load_state_dict(self, s: dict) -> None:
        self.model.load_state_dict(s["model"])
        self.opt_w.load_state_dict(s["opt_w"])
        self.sched.load_state_dict(s["sched"])
        self.corrector.load_state_dict(s["corrector"])
        self.opt_theta.load_state_dict(s["opt_theta"])
        self.bank.load_state_dict(s["bank"])
        self.epoch, self.steps_done, self.history = s["epoch"], s["steps_done"], list(s["history"])
        self.method.load_state_dict(s.get("method", {}))
        checkpoint.set_rng_state(s["rng"])


# ------------------------------------------------------------------ building


def normalize(x: torch.Tensor, data: Data, device: torch.device) -> torch.Tensor:
    """uint8 (n, C, H, W) → float (n, C, H, W), normalized, on ``device``."""
    x = x.to(device, non_blocking=True)
    return (x.float() / 255.0 - data.mean.to(device)) / data.std.to(device)


def build_transforms(cfg: Config, manifest: dict) -> tuple[object, object, int]:
    """(train transform, eval transform, model input side) for the config and the shards."""
    img = manifest["image"]
    stored = img["height"] if img.get("height") and img["height"] == img.get("width") else None
    kind = cfg.data.resolved_transform()
    try:
        size = transforms.output_size(kind, image_size=cfg.data.image_size, stored_size=stored)
        tf = [transforms.build_transform(kind, train=t, image_size=cfg.data.image_size, stored_size=stored)
              for t in (True, False)]
    except ValueError as e:
        raise PipelineError(f"{cfg.data.shard_dir()}: data.transform={kind}: {e}") from None
    return tf[0], tf[1], size


def build_data(cfg: Config, device: torch.device) -> Data:
    shard_dir = cfg.data.shard_dir()
    manifest = shards.load_manifest(shard_dir)
    table = shards.read_labels_table(shard_dir, manifest)
    img = manifest["image"]
    mean = torch.tensor(img["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(img["std"]).view(1, -1, 1, 1)
    train_tf, eval_tf, size = build_transforms(cfg, manifest)
    data = Data(shard_dir, manifest, table["label"], table["true_label"], table["key"],
                torch.empty(0), torch.empty(0), mean, std, train_tf, eval_tf, size)
    mx, my = shards.load_split_tensors(shard_dir, manifest, "meta", transform=eval_tf, channels=data.channels)
    data.meta_x, data.meta_y = mx.to(device), my.to(device)
    return data


def build_state(cfg: Config, data: Data, device: torch.device) -> State:
    torch.manual_seed(cfg.run.seed)
    model = build_model(cfg.model.arch, num_classes=data.num_classes, in_channels=data.channels,
                        stem="imagenet" if data.size > 64 else "cifar").to(device)
    if cfg.model.pretrained:
        load_imagenet_weights(model)
    o = cfg.optim
    opt_w = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt_w, milestones=o.milestones, gamma=o.gamma)
    m = cfg.meta
    corrector = Corrector(m.hidden, m.loss_mode, fixed_beta=None if m.fixed_beta < 0 else m.fixed_beta).to(device)
    opt_theta = torch.optim.Adam(
        [{"params": corrector.alpha_net.parameters(), "lr": m.alpha_lr},
         {"params": corrector.beta_net.parameters(), "lr": m.beta_lr}],
        weight_decay=m.weight_decay,
    )
    bank_cls = ShardedBank if dist.world_size() > 1 else LocalBank
    bank = bank_cls(data.labels, data.num_classes, refresh=m.refresh, dtype=getattr(torch, m.bank_dtype))
    meta = MetaSampler(data.meta_x, data.meta_y, m.meta_batch_size)
    return State(model, opt_w, sched, corrector, opt_theta, bank, meta, methods.build_method_state(cfg, device))


def load_imagenet_weights(model: nn.Module) -> None:
    """torchvision's ImageNet ResNet-50 weights, all but the classifier layer."""
    import torchvision

    sd = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.get_state_dict(progress=False)
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    model.load_state_dict(sd, strict=False)


# ------------------------------------------------------------------ one epoch


def _next(it):
    try:
        return next(it, None), None
    except PipelineError as e:
        return None, e


def _agree(err: PipelineError | None, flag: int) -> int:
    """MIN all-reduce of ``flag`` (-1 on error); on anyone's error every rank raises."""
    got = dist.all_min(-1 if err is not None else flag)
    if got < 0:
        raise err or PipelineError("another rank stopped on bad data (its error is above); stopping too")
    return got


def train_batches(cfg: Config, data: Data, epoch: int):
    """This rank's training batches ``(x, y, idx)`` for an epoch, in lock-step with the
    other ranks: every rank takes the same number of steps (the stream stops for all
    when one runs out), a last batch of one sample is not trained on, and bad data on
    one rank stops every rank with its error rather than leaving them waiting."""
    rank, world = dist.rank(), dist.world_size()
    urls = shards.shard_urls(data.shard_dir, data.manifest, "train")
    seed = cfg.run.seed * 1_000_003 + epoch
    ds = shards.stream(urls, num_classes=data.num_classes, shuffle_seed=seed, shuffle_buffer=cfg.data.shuffle_buffer,
                       expected=shards.expected_counts(data.shard_dir, data.manifest, "train", rank=rank, world=world),
                       rank=rank, world=world, channels=data.channels, transform=data.train_tf,
                       bad_samples=cfg.data.bad_samples)
    it = iter(shards.loader(ds, batch_size=cfg.optim.batch_size, workers=cfg.data.loader_workers))
    while True:
        batch, err = _next(it)
        if not _agree(err, 0 if batch is None or len(batch[1]) < 2 else 1):
            while batch is not None:  # drain, so the shard count check still runs
                batch, err = _next(it)
            _agree(err, 0)
            return
        yield batch


def maybe_crash(cfg: Config, st: State, run_dir: Path) -> None:
    """``scale.crash_at_step``: the last rank dies once at that step (for fault-tolerance tests)."""
    marker = run_dir / ".crash-injected"
    if st.steps_done == cfg.scale.crash_at_step and dist.rank() == dist.world_size() - 1 and not marker.exists():
        marker.write_text(f"rank {dist.rank()} crashed at step {st.steps_done}\n")
        sys.stdout.flush()
        os._exit(1)


def finetune_batches(cfg: Config, st: State, data: Data):
    """The fine-tuning baseline's epoch: clean meta batches, as many as a training epoch has steps."""
    for _ in range(methods.finetune_steps(cfg, data)):
        x, y = st.meta.next()
        yield x, y, None


def train_epoch(cfg: Config, st: State, data: Data, epoch: int, device: torch.device, run_dir: Path) -> dict:
    phase = methods.phase_of(cfg, epoch)
    st.meta.reset(cfg.run.seed * 7919 + 1009 * dist.rank() + epoch)
    avg_from = cfg.meta.warmup_epochs - min(cfg.meta.warmup_avg, cfg.meta.warmup_epochs)
    methods.start_epoch(cfg, st, data, phase, device)
    st.model.train()
    sums = {"loss": 0.0, "meta_loss": 0.0, "n": 0, "meta_n": 0, "steps": 0}

    def meta_batch():
        xm, ym = st.meta.next()
        return normalize(xm, data, device), ym

    batches = finetune_batches(cfg, st, data) if phase == "finetune" else train_batches(cfg, data, epoch)
    for x, y, idx in batches:
        if cfg.scale.crash_at_step:
            maybe_crash(cfg, st, run_dir)
        x, y = normalize(x, data, device), y.to(device)
        res = methods.step(cfg, st, data, "ce" if phase == "finetune" else phase, x, y, idx, device, meta_batch)
        if idx is not None:
            if phase in methods.WARMUP_METHODS:  # its ỹ: the label it trains on
                st.bank.put(idx, y_hat=res.y_hat, y_tilde=res.soft, alpha=res.alpha, beta=res.beta)
            else:
                st.bank.put(idx, y_hat=res.y_hat)
            if phase == "warmup" and epoch > avg_from:
                st.bank.accumulate(idx, res.y_hat)
        if not torch.isnan(res.meta_loss):
            sums["meta_loss"] += float(res.meta_loss) * len(y)
            sums["meta_n"] += len(y)
        sums["loss"] += float(res.loss) * len(y)
        sums["n"] += len(y)
        sums["steps"] += 1
        st.steps_done += 1
    totals = torch.tensor([sums["loss"], sums["meta_loss"], float(sums["n"]), float(sums["meta_n"])],
                          dtype=torch.float64)
    dist.all_reduce_mean_([totals])
    sums["loss"], sums["meta_loss"], sums["n"] = float(totals[0]), float(totals[1]), round(float(totals[2]))
    meta_n = float(totals[3])
    if sums["n"] == 0:
        raise PipelineError(f"{data.shard_dir}: epoch {epoch} streamed no training batch")
    if phase == "warmup" and epoch == cfg.meta.warmup_epochs:
        st.bank.finish_warmup()
    st.bank.end_epoch()
    st.sched.step()
    n = sums["n"]
    return {"phase": phase, "train_loss": sums["loss"] / n,
            "meta_loss": sums["meta_loss"] / meta_n if meta_n else float("nan"),
            "samples": n * dist.world_size(), "steps": sums["steps"]}


@torch.no_grad()
def evaluate(model: nn.Module, data: Data, split: str, device: torch.device, batch_size: int = 512,
             cfg_bad_samples: str = "error") -> float:
    """Accuracy of ``model`` on a clean split streamed from its shards (NaN if empty)."""
    urls = shards.shard_urls(data.shard_dir, data.manifest, split)
    if not urls:
        return float("nan")
    model.eval()
    ds = shards.stream(urls, num_classes=data.num_classes, shuffle_seed=None,
                       expected=shards.expected_counts(data.shard_dir, data.manifest, split),
                       channels=data.channels, transform=data.eval_tf, bad_samples=cfg_bad_samples)
    correct = total = 0
    for x, y, _ in shards.loader(ds, batch_size=batch_size, workers=0):
        pred = model(normalize(x, data, device)).argmax(1).cpu()
        correct += int((pred == y).sum())
        total += len(y)
    model.train()
    return correct / total if total else float("nan")


def bank_metrics(bank: SoftLabelBank, data: Data) -> tuple[dict, dict]:
    """Per-epoch label metrics from the bank, and the table they came from."""
    t = bank.table()
    out: dict = {}
    known, noisy = data.known, data.is_noisy
    if known.any():
        c = corrected_label_accuracy(t["y_tilde"][known], data.true[known], noisy[known])
        p = corrected_label_accuracy(t["y_hat"][known], data.true[known], noisy[known])
        out.update({f"corrected_{k}": v for k, v in c.items()})
        out["prediction_label_acc"] = p["all"]
        out["alpha_clean"] = group_mean(t["alpha"], known & ~noisy)
        out["alpha_noisy"] = group_mean(t["alpha"], noisy)
    out["alpha_mean"] = group_mean(t["alpha"], np.ones(len(t["alpha"]), bool))
    out["beta_mean"] = group_mean(t["beta"], np.ones(len(t["beta"]), bool))
    return out, t


def progress_line(cfg: Config, r: dict) -> str:
    def pct(v):
        return "  n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:5.2f}"

    s = (f"epoch {r['epoch']:3d}/{cfg.optim.epochs} [{r['phase']:6s}] lr {r['lr']:.2e} loss {r['train_loss']:.4f} "
         f"val {pct(r['val_acc'])}% test {pct(r['test_acc'])}%")
    if "corrected_all" in r:
        s += (f" corrected {pct(r['corrected_all'])}% (clean {pct(r['corrected_clean'])} / "
              f"noisy {pct(r['corrected_noisy'])})")
    if r["phase"] == "mslc" and "alpha_clean" in r:
        s += f" alpha clean {r['alpha_clean']:.2f} noisy {r['alpha_noisy']:.2f}"
    return s + f" {r['epoch_seconds']:.0f}s"


# ------------------------------------------------------------------ the loop


def setup_threads(cfg: Config, world_size: int) -> None:
    n = cfg.scale.threads or max(1, (os.cpu_count() or 1) // world_size)
    torch.set_num_threads(n)


def run(cfg: Config, reporter, device: torch.device | None = None, *, log=print) -> dict:
    """Train for ``cfg.optim.epochs`` epochs; write outputs to ``storage_path/name``.

    Returns ``{'run_dir', 'metrics', 'corrected_labels', 'tensorboard', 'summary'}``.
    """
    device = device or torch.device("cpu")
    setup_threads(cfg, reporter.world_size)
    run_dir = Path(cfg.run.storage_path) / cfg.run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    data = build_data(cfg, device)
    st = build_state(cfg, data, device)
    lead = reporter.rank == 0
    saved = reporter.restore()
    if saved is not None:
        st.load_state_dict(saved)
        log(f"resumed from the checkpoint of epoch {st.epoch}")
    tb = outputs.TensorBoardLog(run_dir, data.manifest["classes"]) if lead and cfg.run.tensorboard else None
    known = data.known
    if tb and known.any() and st.epoch == 0:
        tb.confusion("given_vs_true", data.true[known], data.labels[known], 0)
    extra = {"config": cfg.to_dict(), "noise": {k: data.manifest["noise"][k] for k in ("kind", "rate", "realized_rate")}}
    for epoch in range(st.epoch + 1, cfg.optim.epochs + 1):
        t0 = time.time()
        lr = st.opt_w.param_groups[0]["lr"]
        stats = train_epoch(cfg, st, data, epoch, device, run_dir)
        nan = float("nan")  # only rank 0 evaluates; the others' records are not reported anywhere
        record = {"epoch": epoch, "lr": lr, **stats,
                  "val_acc": evaluate(st.model, data, "val", device, cfg_bad_samples=cfg.data.bad_samples)
                  if lead else nan,
                  "test_acc": evaluate(st.model, data, "test", device, cfg_bad_samples=cfg.data.bad_samples)
                  if lead else nan}
        label_stats, table = bank_metrics(st.bank, data)
        record.update(label_stats)
        record["epoch_seconds"] = time.time() - t0
        st.epoch = epoch
        st.history.append(record)
        if lead:
            log(progress_line(cfg, record))
            outputs.write_metrics(run_dir, st.history, extra)
            if tb:
                tb.epoch(record, alpha=table["alpha"], beta=table["beta"], is_noisy=data.is_noisy, known=known)
                if known.any():
                    tb.confusion("corrected_vs_true", data.true[known], table["y_tilde"][known].argmax(1), epoch)
        reporter.report(record, st.state_dict(), epoch)
    result = {"run_dir": str(run_dir), "summary": outputs.summarize(st.history)}
    t = st.bank.table()  # collective: every rank takes part in gathering the bank
    if lead:
        result["corrected_labels"] = str(outputs.write_corrected_labels(
            run_dir / "corrected_labels.parquet", keys=data.keys, given=data.labels, soft=t["y_tilde"],
            alpha=t["alpha"], beta=t["beta"], true=data.true))
        result["metrics"] = str(outputs.write_metrics(run_dir, st.history, extra))
        torch.save(st.model.state_dict(), run_dir / "model.pt")
        result["model"] = str(run_dir / "model.pt")
        if tb:
            tb.close()
            result["tensorboard"] = str(run_dir / "tensorboard")
    return result


def console(line: str) -> None:
    """One line to the worker's stdout, which Ray forwards to the driver once
    (Ray Train's patched ``print`` would emit it twice)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's entry: the typed config back from its dict, on the first line."""
    cfg = Config.from_dict(config)
    import ray.train.torch

    device = ray.train.torch.get_device()
    run(cfg, checkpoint.RayReporter(resume_from=cfg.run.resume_from or None), device, log=console)
