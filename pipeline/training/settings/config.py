"""Typed run configuration: the schema, its validation, and ``key=value`` overrides.

A config is a tree of dataclasses validated in ``__post_init__``. It goes to Ray
as a plain dict (:meth:`Config.to_dict`) and comes back with :meth:`Config.from_dict`.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

from mslc.options import ARCHS, PRECISIONS
from pipeline.errors import ConfigError, require
from pipeline.shardset.spec import PrepareOptions
from pipeline.training.settings.methods import (
    METHODS,
    RENAMED,
    BootstrapSettings,
    FineTuneSettings,
    GCESettings,
    JointSettings,
    MSLCSettings,
    MWNetSettings,
)

TRANSFORMS = ("auto", "none", "cifar", "imagenet")


@dataclass
class DataConfig(PrepareOptions):
    """The prepared shards (:class:`PrepareOptions`: source, noise, splits) and how they stream."""

    verify: str = "full"  # full (sha256) | size | none, checked before training
    loader_workers: int = 0
    shuffle_buffer: int = 5000
    transform: str = "auto"  # none | cifar (crop 4 + flip) | imagenet (resize, crop, flip); auto: by data set
    image_size: int = 224  # imagenet transform: crop size (resize to size * 256 / 224 first)
    bad_samples: str = "error"  # a sample that fails to decode while streaming: error (all ranks stop) | skip
    decode: str = "cpu"  # training images: cpu (loader processes decode and augment) | gpu (they read bytes; the device decodes JPEGs)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.decode in ("cpu", "gpu"), f"data.decode must be cpu|gpu, got {self.decode!r}")
        for name in ("loader_workers", "shuffle_buffer", "image_size"):
            require(getattr(self, name) >= 0, f"data.{name} must be >= 0, got {getattr(self, name)}")
        require(self.verify in ("full", "size", "none"), f"data.verify must be full|size|none, got {self.verify!r}")
        require(self.transform in TRANSFORMS, f"data.transform must be one of {TRANSFORMS}, got {self.transform!r}")
        require(self.image_size >= 8, f"data.image_size must be >= 8, got {self.image_size}")
        require(self.bad_samples in ("error", "skip"), f"data.bad_samples must be error|skip, got {self.bad_samples!r}")

    def resolved_transform(self) -> str:
        if self.transform != "auto":
            return self.transform
        return {"fashion-mnist": "none", "cifar10": "cifar", "cifar100": "cifar"}.get(self.dataset, "imagenet")


@dataclass
class ModelConfig:
    arch: str = "small-cnn"
    pretrained: bool = False  # start from pretrained weights: model.weights, or torchvision's ImageNet ResNet-50 from download.pytorch.org
    weights: str = ""  # those weights: a file (local or shared storage) or URL (http(s), s3, gs), fetched once per node
    channels_last: str = "auto"  # memory format of the model and its inputs; auto: on CUDA devices

    def __post_init__(self) -> None:
        require(
            self.channels_last in ("auto", "true", "false"),
            f"model.channels_last must be auto|true|false, got {self.channels_last!r}",
        )
        require(self.arch in ARCHS, f"model.arch must be one of {ARCHS}, got {self.arch!r}")
        require(
            not self.pretrained or self.arch == "resnet50" or self.weights,
            "model.pretrained without model.weights loads torchvision's ResNet-50: it needs model.arch=resnet50",
        )
        require(not self.weights or self.pretrained, "model.weights is read with model.pretrained=true")


@dataclass
class OptimConfig:
    """The classifier's SGD and its step schedule (epochs count from 1)."""

    epochs: int = 14
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: list[int] = field(default_factory=lambda: [10, 12])
    gamma: float = 0.1
    precision: str = (
        "auto"  # bf16 | fp16 | fp32 autocast of the model's passes; auto: bf16 on CUDA that has it, else fp32
    )

    def __post_init__(self) -> None:
        require(self.precision in PRECISIONS, f"optim.precision must be one of {PRECISIONS}, got {self.precision!r}")
        require(self.epochs >= 1, f"optim.epochs must be >= 1, got {self.epochs}")
        require(self.batch_size >= 1, f"optim.batch_size must be >= 1, got {self.batch_size}")
        require(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        require(0 <= self.momentum < 1, f"optim.momentum must be in [0, 1), got {self.momentum}")
        require(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        require(all(m >= 1 for m in self.milestones), "optim.milestones must be epochs >= 1")


@dataclass
class MetaConfig:
    """The method, and what every method shares: the CE warm-up, the clean meta set's batches,
    the soft-label bank. Each method's own keys are its section (``mslc.*``, ``gce.*``, …:
    :mod:`pipeline.training.settings.methods`). ``method=ce`` trains on the given labels only;
    the other baselines (``mslc.baselines``) take the same data, model and schedule."""

    method: str = "mslc"
    warmup_epochs: int = 4  # plain CE on the given labels first (methods that warm up)
    warmup_avg: int = 10  # ỹ starts as the mean softmax of the last q warm-up epochs
    meta_batch_size: int = 128  # clean meta samples a step (the meta loss, MW-Net's, fine-tuning's batches)
    bank_dtype: str = "float32"

    def __post_init__(self) -> None:
        require(self.method in METHODS, f"meta.method must be one of {tuple(METHODS)}, got {self.method!r}")
        require(self.warmup_epochs >= 0, f"meta.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        require(self.warmup_avg >= 1, f"meta.warmup_avg must be >= 1, got {self.warmup_avg}")
        require(self.meta_batch_size >= 1, f"meta.meta_batch_size must be >= 1, got {self.meta_batch_size}")
        require(
            self.bank_dtype in ("float32", "float16", "bfloat16"),
            f"meta.bank_dtype must be float32|float16|bfloat16, got {self.bank_dtype!r}",
        )


@dataclass
class ScaleConfig:
    workers: int | str = 1  # N, or MIN-MAX for an elastic group (Ray Train resizes it between MIN and MAX)
    use_gpu: str = "auto"  # auto: GPU when CUDA is present
    cpus_per_worker: float = 1.0  # fractions let small trials share a CPU in a sweep
    threads: int = 0  # torch threads per worker; 0 = all cores / workers
    max_failures: int = 0  # worker failures Ray recovers from (resuming from the last checkpoint); -1: no limit
    crash_at_step: int = 0  # > 0: the last rank dies once at this step (tests and demos of recovery)

    def __post_init__(self) -> None:
        self.workers = parse_workers(self.workers)
        require(self.use_gpu in ("auto", "true", "false"), "scale.use_gpu must be auto|true|false")
        require(self.cpus_per_worker > 0 and self.threads >= 0, "scale.cpus_per_worker > 0, scale.threads >= 0")
        require(self.max_failures >= -1, "scale.max_failures must be >= -1 (-1: unlimited)")
        require(self.crash_at_step >= 0, f"scale.crash_at_step must be >= 0, got {self.crash_at_step}")

    @property
    def elastic(self) -> bool:
        return isinstance(self.workers, str)

    @property
    def min_workers(self) -> int:
        return int(self.workers.split("-")[0]) if self.elastic else self.workers

    @property
    def max_workers(self) -> int:
        return int(self.workers.split("-")[1]) if self.elastic else self.workers

    def ray_num_workers(self) -> int | tuple[int, int]:
        """Ray Train's ``ScalingConfig.num_workers``: N, or ``(MIN, MAX)`` (elastic)."""
        return (self.min_workers, self.max_workers) if self.elastic else self.workers


def parse_workers(v: int | str) -> int | str:
    """``scale.workers``: an int ≥ 1, or ``"MIN-MAX"`` with 1 ≤ MIN < MAX (``"N"`` and ``"N-N"`` are N)."""
    if isinstance(v, str):
        parts = v.strip().split("-")
        if len(parts) in (1, 2) and all(p.strip().isdigit() for p in parts):
            lo, hi = int(parts[0]), int(parts[-1])
            require(1 <= lo <= hi, f"scale.workers={v!r}: need 1 <= MIN <= MAX")
            return lo if lo == hi else f"{lo}-{hi}"
        raise ConfigError(f"scale.workers must be a number N or a range MIN-MAX (elastic), got {v!r}")
    require(v >= 1, f"scale.workers must be >= 1, got {v}")
    return v


EXPORTS = ("auto", "latest", "window")  # run.export


@dataclass
class RunConfig:
    storage_path: str = "runs"  # made absolute; a local path or shared storage
    name: str = ""  # unique per run; empty: <preset>-<time>-<random>
    seed: int = 0
    tensorboard: bool = True
    resume_from: str = ""  # a checkpoint directory to start from (any worker count)
    keep_checkpoints: int = 2  # the latest K epoch checkpoints are kept (0: all)
    keep_best: bool = True  # and a copy of the best epoch on clean validation (checkpoint_best)
    log_every_s: float = (
        30.0  # a progress line (and step-level TensorBoard scalars) inside an epoch this often; 0: none
    )
    checkpoint_every_steps: int = (
        0  # > 0: also a checkpoint inside an epoch every this many steps (it resumes mid-epoch)
    )
    checkpoint_every_min: float = (
        0.0  # > 0: ... or every this many minutes (checked every 50 steps); 0: epoch ends only
    )
    report: bool = True  # at the end: report/index.html, the suspected label errors as pictures (pipeline/report.py)
    report_top: int = 16  # samples per class in each of the report's galleries
    relabel_threshold: float | None = (
        None  # relabel.csv: flags whose corrected label has at least this probability; None: from relabel_precision
    )
    relabel_precision: float = 0.95  # ... the lowest threshold whose flags are estimated (no true labels) this share right, with 95% confidence
    calibrate: bool = (
        True  # est_correct moved by its bias measured on the clean validation split (no true training label)
    )
    crossfit_folds: int = 2  # >= 2: est_correct from held-out predictions: after the run this many fresh models, each
    # trained on the other folds' samples with their exported ỹ, predict their own fold (0: the run's own model,
    # no extra cost, but its estimate missed some bands by 5-38 points at asym/instance noise: benchmarks/README.md)
    crossfit_epochs: int = 8  # ... each for this many passes over its samples
    export_soft: bool = False  # corrected_labels.parquet also holds each sample's whole ỹ row (column soft)
    export: str = "auto"  # latest: ỹ of the latest epoch within 1 s.e. of the best clean validation; window: the mean
    # of them all; auto: the method's own (MSLC: window; the methods whose table is the model's prediction: latest)

    def __post_init__(self) -> None:
        require(self.log_every_s >= 0, f"run.log_every_s must be >= 0 (0: no progress lines), got {self.log_every_s}")
        require(
            "/" not in self.name and "\\" not in self.name and "\0" not in self.name,
            f"run.name must not contain '/', '\\' or NUL, got {self.name!r}",
        )
        require(
            self.name not in (".", ".."),
            f"run.name {self.name!r} names a directory above or at run.storage_path, not a run in it",
        )
        require(self.keep_checkpoints >= 0, f"run.keep_checkpoints must be >= 0 (0: all), got {self.keep_checkpoints}")
        require(
            self.checkpoint_every_steps >= 0 and self.checkpoint_every_min >= 0,
            "run.checkpoint_every_steps and run.checkpoint_every_min must be >= 0 (0: only at epoch ends)",
        )
        require(
            self.export in EXPORTS,
            f"run.export must be one of {EXPORTS} (which soft labels are exported), got {self.export!r}",
        )
        require(self.report_top >= 1, f"run.report_top must be >= 1 (samples per class shown), got {self.report_top}")
        require(
            self.relabel_threshold is None or 0.0 <= self.relabel_threshold <= 1.0,
            f"run.relabel_threshold is a probability in [0, 1] (or null: chosen from run.relabel_precision), "
            f"got {self.relabel_threshold}",
        )
        require(
            0.0 < self.relabel_precision <= 1.0,
            f"run.relabel_precision is a share in (0, 1], got {self.relabel_precision}",
        )
        require(
            self.crossfit_folds == 0 or self.crossfit_folds >= 2,
            f"run.crossfit_folds is 0 (off) or the number of folds, at least 2, got {self.crossfit_folds}",
        )
        require(self.crossfit_epochs >= 1, f"run.crossfit_epochs must be >= 1, got {self.crossfit_epochs}")

    @property
    def mid_epoch_checkpoints(self) -> bool:
        return self.checkpoint_every_steps > 0 or self.checkpoint_every_min > 0


@dataclass
class Config:
    preset: str = "fmnist-sym40"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    run: RunConfig = field(default_factory=RunConfig)
    # each method's own settings (read only when meta.method is that method)
    mslc: MSLCSettings = field(default_factory=MSLCSettings)
    mwnet: MWNetSettings = field(default_factory=MWNetSettings)
    gce: GCESettings = field(default_factory=GCESettings)
    bootstrap: BootstrapSettings = field(default_factory=BootstrapSettings)
    joint: JointSettings = field(default_factory=JointSettings)
    finetune: FineTuneSettings = field(default_factory=FineTuneSettings)

    def __post_init__(self) -> None:
        why = METHODS[self.meta.method].config_error(self)
        require(why is None, why or "")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        """Rebuild (and re-validate) a config; unknown keys are an error."""
        return _build(cls, d, "")


def _build(cls, d: dict, prefix: str):
    if not isinstance(d, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or '<root>'} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    for k in unknown:
        renamed(f"{prefix}{k}")
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}'; valid keys: {', '.join(all_keys())}")
    kwargs = {}
    for k, v in d.items():
        t = hints[k]
        kwargs[k] = _build(t, v, f"{prefix}{k}.") if dataclasses.is_dataclass(t) else _typed(v, t, f"{prefix}{k}")
    try:
        return cls(**kwargs)
    except TypeError as e:  # a check in __post_init__ met a value of a type the schema did not foresee
        raise ConfigError(f"config section {prefix.rstrip('.') or '<root>'}: {e}") from None


def _typed(v, t, key: str):
    """``v`` checked against the declared type ``t`` (an int is taken for a float); a
    mismatch is a :class:`ConfigError` naming the key."""

    def number(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    if t is bool:
        ok = isinstance(v, bool)
    elif t is int:
        ok = isinstance(v, int) and not isinstance(v, bool)
    elif t is float:
        ok, v = number(v), float(v) if number(v) else v
    elif t is str:
        ok = isinstance(v, str)
    elif t == (int | str):
        ok = isinstance(v, (int, str)) and not isinstance(v, bool)
    elif t == list[int]:
        ok = isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
    elif t == (float | None):
        ok, v = v is None or number(v), float(v) if number(v) else v
    else:
        return v
    if not ok:
        name = {list[int]: "a list of integers", float | None: "a number or null", int | str: 'N or "MIN-MAX"'}.get(
            t, getattr(t, "__name__", t)
        )
        raise ConfigError(f"config key {key}: expected {name}, got {v!r}")
    return v


def all_keys() -> list[str]:
    """Every ``section.key`` the command line accepts."""
    out = []
    for f in dataclasses.fields(Config):
        t = typing.get_type_hints(Config)[f.name]
        if dataclasses.is_dataclass(t):
            out += [f"{f.name}.{g.name}" for g in dataclasses.fields(t)]
        else:
            out.append(f.name)
    return out


LEARNED = "learned"  # the command-line spelling of None for an optional constant (mslc.fixed_beta)


def _declared_type(parts: list[str]):
    """The annotation of ``section.key`` in the schema."""
    return typing.get_type_hints(typing.get_type_hints(Config)[parts[0]])[parts[1]]


def _parse_value(raw: str, current, key: str, declared=None):
    """Parse ``raw`` to the type of the key's current value (``float | None`` keys take
    a number or ``learned``)."""
    if declared == (int | str):
        return int(raw) if raw.strip().isdigit() else raw.strip()
    if declared == (float | None):
        if raw.strip().lower() in (LEARNED, "none", "null"):
            return None
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"config key {key}: cannot parse {raw!r} as a number or {LEARNED!r}") from None
    try:
        if isinstance(current, bool):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return raw.lower() in ("true", "1", "yes")
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
        if isinstance(current, list):
            return [int(v) for v in raw.strip("[]").split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"config key {key}: cannot parse {raw!r} as {type(current).__name__}") from None
    return raw


def renamed(key: str) -> None:
    """A key of an older schema: raise :class:`ConfigError` naming where it is now."""
    if key in RENAMED:
        raise ConfigError(
            f"config key {key} is now {RENAMED[key]}: each method's own keys are its section (see --help)"
        )


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.key=value`` strings and re-validate."""
    d = cfg.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"expected key=value, got {item!r}")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = d
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(all_keys())}")
            node = node[p]
        if parts[-1] not in node or isinstance(node[parts[-1]], dict):
            renamed(key.strip())
            raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(all_keys())}")
        node[parts[-1]] = _parse_value(raw, node[parts[-1]], key, _declared_type(parts))
    return Config.from_dict(d)


def merge(base: dict, over: dict) -> dict:
    """``base`` with the (nested, partial) mapping ``over`` laid on top."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def replace(cfg: Config, **sections) -> Config:
    """A copy of ``cfg`` with whole sections or fields replaced, re-validated."""
    return Config.from_dict(
        {
            **cfg.to_dict(),
            **{k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in sections.items()},
        }
    )
