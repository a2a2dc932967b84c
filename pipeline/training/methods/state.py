"""A worker's state: what it knows of the data, what it trains, and how both are built.

Both the loop (:mod:`pipeline.training.run.loop`) and the training methods (:mod:`pipeline.training.methods.registry`)
import this module; it imports neither.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from mslc import dist
from mslc.bank import LocalBank, ShardedBank, SoftLabelBank
from mslc.corrector import Corrector
from mslc.models import build_model
from mslc.precision import Amp
from pipeline import shardset
from pipeline.errors import PipelineError
from pipeline.training.data import streaming, transforms
from pipeline.training.settings.methods import uses_corrector
from pipeline.weights import load_into, weights_source

if TYPE_CHECKING:  # type hints only: the config module imports the methods, which import this one
    from pipeline.training.settings.config import Config


def rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state()[1].tolist(),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": list(random.getstate()[1]),
    }


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(("MT19937", np.asarray(s["numpy"], dtype=np.uint32), s["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(s["python"]), None))


@dataclass
class Data:
    """What a worker knows of the data besides the streamed training batches.

    labels : (N,) int64 given labels; true : (N,) int64 (-1 unknown); keys : (N,)
    meta_x : (M, C, H, W) uint8 after the evaluation transform; meta_y : (M,) int64;
    mean, std : (1, C, 1, 1); train_tf / eval_tf: per-sample transforms (or None);
    size : the side of the images the model sees; eval_cache: see
    :func:`pipeline.training.run.evaluate.eval_batches`.
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
    eval_cache: dict = field(default_factory=dict)  # split → (images, labels) decoded once (small splits)
    memory_format: torch.memory_format = torch.contiguous_format  # of the model's inputs (model.channels_last)
    norm_cache: dict = field(default_factory=dict)  # device → (mean, std) there: copied once, not every step

    def norm_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, std)`` (1, C, 1, 1) on ``device``, copied there once."""
        key = str(device)
        if key not in self.norm_cache:
            self.norm_cache[key] = (self.mean.to(device), self.std.to(device))
        return self.norm_cache[key]

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
        idx = self.perm[self.pos : self.pos + self.batch_size].to(self.x.device, non_blocking=True)
        self.pos += self.batch_size
        return self.x[idx], self.y[idx]

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "perm": self.perm.clone(), "pos": self.pos}

    def load_state_dict(self, s: dict) -> None:
        self.gen.set_state(s["gen"])
        self.perm, self.pos = s["perm"].clone(), int(s["pos"])


@dataclass
class TrainState:
    """Everything a worker trains and checkpoints. ``method`` is the training method's own
    state (anything with ``state_dict`` / ``load_state_dict``), set by the loop."""

    model: nn.Module
    opt_w: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    corrector: Corrector | None  # MSLC's α_net / β_net (None: a method that trains none)
    opt_theta: torch.optim.Optimizer | None
    bank: SoftLabelBank
    meta: MetaSampler
    method: Any = None
    trusted: MetaSampler | None = None  # the meta set's samples that also train the classifier (mslc.trusted_passes)
    amp: Amp = field(default_factory=Amp)  # the precision of the model's passes (optim.precision)
    epoch: int = 0
    steps_done: int = 0
    history: list[dict] = field(default_factory=list)
    labels: dict | None = None  # rank 0: the soft labels to export, {epoch, y_tilde, y_hat, alpha, beta} as tensors
    corrected: torch.Tensor | None = None  # (N,) int32: arg-max ỹ at the last epoch's end (each epoch's churn)

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "opt_w": self.opt_w.state_dict(),
            "sched": self.sched.state_dict(),
            "corrector": None if self.corrector is None else self.corrector.state_dict(),
            "opt_theta": None if self.opt_theta is None else self.opt_theta.state_dict(),
            "bank": self.bank.state_dict(),
            "epoch": self.epoch,
            "steps_done": self.steps_done,
            "history": self.history,
            "rng": rng_state(),
            "method": self.method.state_dict(),
            "labels": self.labels,
            "amp": self.amp.state_dict(),
            "corrected": self.corrected,
        }

    def load_state_dict(self, s: dict) -> None:
        self.model.load_state_dict(s["model"])
        self.opt_w.load_state_dict(s["opt_w"])
        self.sched.load_state_dict(s["sched"])
        if self.corrector is not None:
            self.corrector.load_state_dict(s["corrector"])
            self.opt_theta.load_state_dict(s["opt_theta"])
        self.bank.load_state_dict(s["bank"])
        self.epoch, self.steps_done, self.history = s["epoch"], s["steps_done"], list(s["history"])
        self.method.load_state_dict(s.get("method", {}))
        self.labels = s.get("labels")
        self.corrected = s.get("corrected")
        self.amp.load_state_dict(s.get("amp", {}))
        set_rng_state(s["rng"])


def normalize(x: torch.Tensor, data: Data, device: torch.device) -> torch.Tensor:
    """uint8 (n, C, H, W) → float (n, C, H, W), normalized, on ``device``, in
    ``data.memory_format`` (channels-last for a convolutional model on CUDA)."""
    x = x.to(device, non_blocking=True)
    mean, std = data.norm_on(device)
    x = (x.float() / 255.0 - mean) / std
    return x.contiguous(memory_format=data.memory_format)


def use_channels_last(cfg: Config, device: torch.device) -> bool:
    """``model.channels_last``: auto turns it on for CUDA devices (every model here is convolutional)."""
    return cfg.model.channels_last == "true" or (cfg.model.channels_last == "auto" and device.type == "cuda")


def build_transforms(cfg: Config, manifest: dict) -> tuple[object, object, int]:
    """(train transform, eval transform, model input side) for the config and the shards."""
    img = manifest["image"]
    stored = img["height"] if img.get("height") and img["height"] == img.get("width") else None
    kind = cfg.data.resolved_transform()
    try:
        size = transforms.output_size(kind, image_size=cfg.data.image_size, stored_size=stored)
        tf = [
            transforms.build_transform(kind, train=t, image_size=cfg.data.image_size, stored_size=stored)
            for t in (True, False)
        ]
    except ValueError as e:
        raise PipelineError(f"{cfg.data.shard_dir()}: data.transform={kind}: {e}") from None
    return tf[0], tf[1], size


def build_data(cfg: Config, device: torch.device) -> Data:
    """The manifest, label table and transforms of the shards, and the meta set on ``device``."""
    shard_dir = cfg.data.shard_dir()
    manifest = shardset.load_manifest(shard_dir)
    table = shardset.read_labels_table(shard_dir, manifest)
    img = manifest["image"]
    mean = torch.tensor(img["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(img["std"]).view(1, -1, 1, 1)
    train_tf, eval_tf, size = build_transforms(cfg, manifest)
    data = Data(
        shard_dir,
        manifest,
        table["label"],
        table["true_label"],
        table["key"],
        torch.empty(0),
        torch.empty(0),
        mean,
        std,
        train_tf,
        eval_tf,
        size,
    )
    if use_channels_last(cfg, device):
        data.memory_format = torch.channels_last
    mx, my = streaming.load_split_tensors(shard_dir, manifest, "meta", transform=eval_tf, channels=data.channels)
    data.meta_x, data.meta_y = mx.to(device), my.to(device)
    return data


def build_bare_model(cfg: Config, *, num_classes: int, channels: int, size: int) -> nn.Module:
    """The run's model, untrained and on the CPU (``model.arch``; the stem from the input size)."""
    return build_model(
        cfg.model.arch, num_classes=num_classes, in_channels=channels, stem="imagenet" if size > 64 else "cifar"
    )


def build_state(cfg: Config, data: Data, device: torch.device) -> TrainState:
    """Model, optimizers, schedule, the corrector (methods that train one: MSLC), bank and
    meta sampler, seeded by ``run.seed``."""
    torch.manual_seed(cfg.run.seed)
    model = build_bare_model(cfg, num_classes=data.num_classes, channels=data.channels, size=data.size).to(device)
    if weights_source(cfg.model):
        load_into(model, weights_source(cfg.model))
    model = model.to(memory_format=data.memory_format)
    o = cfg.optim
    opt_w = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt_w, milestones=o.milestones, gamma=o.gamma)
    corrector, opt_theta = build_corrector(cfg, data, device) if uses_corrector(cfg.meta.method) else (None, None)
    refresh = cfg.mslc.refresh if cfg.meta.method == "mslc" else "epoch"
    bank_cls = ShardedBank if dist.world_size() > 1 else LocalBank
    bank = bank_cls(
        data.labels, data.num_classes, refresh=refresh, dtype=getattr(torch, cfg.meta.bank_dtype), device=device
    )
    meta, trusted = build_meta_samplers(cfg, data)
    return TrainState(
        model, opt_w, sched, corrector, opt_theta, bank, meta, trusted=trusted, amp=Amp.build(o.precision, device)
    )


def build_corrector(cfg: Config, data: Data, device: torch.device) -> tuple[Corrector, torch.optim.Optimizer]:
    """MSLC's corrector (``mslc.*``) and θ's Adam."""
    m = cfg.mslc
    corrector = Corrector(
        m.hidden,
        m.loss_mode,
        fixed_beta=m.fixed_beta,
        kind=m.corrector,
        num_classes=data.num_classes,
        transition=m.transition == "estimated",
        alpha_prior=m.alpha_prior,
        posterior_mix=m.posterior_mix,
        mix_min_concentration=m.mix_min_concentration,
    ).to(device)
    opt_theta = torch.optim.Adam(
        [
            {"params": corrector.alpha_net.parameters(), "lr": m.alpha_lr},
            {"params": corrector.beta_net.parameters(), "lr": m.beta_lr},
        ],
        weight_decay=m.weight_decay,
    )
    return corrector, opt_theta


def trusted_batch_size(passes: float, *, meta: int, train: int, batch: int) -> int:
    """Trusted samples per step (on each rank, beside its ``batch`` noisy ones) so that the
    ``meta`` clean samples are trained on about ``passes`` times an epoch of ``train``
    samples, at any worker count: ``round(passes · meta · batch / train)``, at least 1 and
    at most ``batch`` (0 when ``passes`` is 0). Tied to the data's sizes, not to a count per step,
    so that a trusted sample weighs as much against a noisy one at every scale (128 a
    step on a 10,000-image subset, 22 on all of Fashion-MNIST, at 10 passes)."""
    if passes <= 0 or meta <= 0 or train <= 0:
        return 0
    return int(min(batch, max(1, round(passes * meta * batch / train))))


def build_meta_samplers(cfg: Config, data: Data) -> tuple[MetaSampler, MetaSampler | None]:
    """The meta loss's sampler and, with ``mslc.trusted_passes``, the trusted samples' one:
    the same clean meta set, drawn independently, ``trusted_batch_size`` a step."""
    meta = MetaSampler(data.meta_x, data.meta_y, cfg.meta.meta_batch_size)
    if cfg.meta.method != "mslc":
        return meta, None
    k = trusted_batch_size(
        cfg.mslc.trusted_passes,
        meta=len(data.meta_y),
        train=int(data.manifest["splits"]["train"]["count"]),
        batch=cfg.optim.batch_size,
    )
    return meta, (MetaSampler(data.meta_x, data.meta_y, k) if k else None)
