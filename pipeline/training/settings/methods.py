"""Each training method's declaration and its own settings, without torch: the one registry,
:data:`METHODS`, that config validation, ``--help``, the worker, the sweep and the
benchmarks read.

A method's settings are a section of the config named after it (``mslc.*``, ``gce.*``, …):
their keys, defaults and validation live in its settings class below, so a reader sees
which keys a method reads. The keys every method shares (the warm-up, the meta set's
batches, the bank) are the ``meta`` section. The implementation (a
:class:`pipeline.training.methods.registry.Method` subclass, which imports torch) is named
by ``impl`` and loaded only when a run builds it.

Adding a method: its class (with ``name``, ``label`` and its hooks) and one entry here,
either a :class:`MethodInfo` (a built-in, with its settings class if it has keys) or the
class itself (an entry needs only ``name``, ``label``, ``uses_warmup``, ``writes_labels``,
``tunable``, ``config_error`` and a docstring, which both provide).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from mslc.options import (
    ALPHA_PRIORS,
    CORRECTORS,
    LOSS_MODES,
    META_GRAD_IMPLS,
    META_GRADS,
    META_SCOPES,
    REFRESH_POLICIES,
)
from pipeline.errors import require

TRANSITIONS = ("none", "estimated")  # mslc.transition
VIRTUAL_LRS = ("current", "initial")


@dataclass
class MSLCSettings:
    """``mslc.*``: the corrector (α_net, β_net), how it is meta-learned, and what the paper
    leaves open. The defaults are the paper's; the user-facing presets take
    :func:`pipeline.training.settings.presets.recommended_mslc`."""

    corrector: str = "loss"  # loss: the paper's α_net/β_net of a loss; class: they also see the class pair
    loss_mode: str = "soft"  # soft: paper Eq. 4; hard: the authors' three hard terms
    refresh: str = "epoch"  # epoch: authors' code; step: paper Algorithm 1 (when ỹ_{t-1} is refreshed)
    alpha_lr: float = 1e-3  # Adam lr of α_net
    beta_lr: float = 1e-3  # Adam lr of β_net
    weight_decay: float = 1e-4  # of θ
    hidden: int = 100  # α_net / β_net hidden units
    virtual_lr_scale: float = 1.0  # virtual-step lr = scale × the classifier's lr (authors: 10)
    virtual_lr: str = "current"  # current: that lr as it decays (the paper); initial: optim.lr throughout
    grad: str = "exact"  # exact: gradient of the global meta loss across workers; local: per-rank, averaged
    meta_every: int = 1  # approximation: update θ every k-th step only (1 = every step, exact)
    meta_scope: str = "all"  # approximation: "last" moves only the classifier layer in the virtual step
    fixed_beta: float | None = None  # ablation: a constant β in [0, 1] instead of β_net; None ("learned"): β_net
    grad_impl: str = "jvp"  # jvp (forward mode, measured faster) or double-backward: the same exact θ-gradient (scope last: always the latter)
    lagged: bool = (
        False  # approximation: the real step trains on θ's soft labels before its meta update (one backward fewer)
    )
    alpha_prior: str = (
        "none"  # none: α = α_net(·) (the paper); prediction: α = σ(logit ŷ_y + α_net's logit), starting near ŷ_y
    )
    transition: str = (
        "none"  # estimated: ŷ in Eq. 6 becomes its posterior under the noise transition estimated at the warm-up's end
    )
    trusted_passes: float = (
        0.0  # the clean meta samples also train the classifier, each ~this many times an epoch (0: never, the paper)
    )

    posterior_mix: float = (
        0.0  # the classifier trains on (1 − this)·ỹ + this·(Eq. 6's prediction term); 0: on ỹ (the paper)
    )
    mix_min_concentration: float = (
        0.0  # posterior_mix only where the estimated noise is this concentrated (transition_concentration); 0: always
    )

    def __post_init__(self) -> None:
        require(0 <= self.posterior_mix <= 1, f"mslc.posterior_mix must be in [0, 1], got {self.posterior_mix}")
        require(
            0 <= self.mix_min_concentration <= 1,
            f"mslc.mix_min_concentration must be in [0, 1], got {self.mix_min_concentration}",
        )
        require(
            self.mix_min_concentration == 0 or self.posterior_mix == 0 or self.transition == "estimated",
            "mslc.mix_min_concentration needs the estimated noise transition (mslc.transition=estimated)",
        )
        require(self.corrector in CORRECTORS, f"mslc.corrector must be one of {CORRECTORS}, got {self.corrector!r}")
        require(self.loss_mode in LOSS_MODES, f"mslc.loss_mode must be one of {LOSS_MODES}, got {self.loss_mode!r}")
        require(self.refresh in REFRESH_POLICIES, f"mslc.refresh must be one of {REFRESH_POLICIES}")
        for name in ("alpha_lr", "beta_lr", "virtual_lr_scale"):
            require(getattr(self, name) > 0, f"mslc.{name} must be > 0, got {getattr(self, name)}")
        require(self.weight_decay >= 0, f"mslc.weight_decay must be >= 0, got {self.weight_decay}")
        require(self.hidden >= 1, f"mslc.hidden must be >= 1, got {self.hidden}")
        require(self.virtual_lr in VIRTUAL_LRS, f"mslc.virtual_lr must be current|initial, got {self.virtual_lr!r}")
        require(self.grad in META_GRADS, f"mslc.grad must be one of {META_GRADS}, got {self.grad!r}")
        require(self.meta_every >= 1, f"mslc.meta_every must be >= 1, got {self.meta_every}")
        require(self.meta_scope in META_SCOPES, f"mslc.meta_scope must be one of {META_SCOPES}")
        require(
            self.fixed_beta is None or (isinstance(self.fixed_beta, (int, float)) and 0 <= self.fixed_beta <= 1),
            f"mslc.fixed_beta must be 'learned' (β_net) or a constant in [0, 1], got {self.fixed_beta!r}",
        )
        require(self.grad_impl in META_GRAD_IMPLS, f"mslc.grad_impl must be one of {META_GRAD_IMPLS}")
        require(
            not self.lagged or self.meta_scope == "all",
            "mslc.lagged=true reuses the virtual step's gradient of every parameter: it needs mslc.meta_scope=all",
        )
        require(
            self.alpha_prior in ALPHA_PRIORS,
            f"mslc.alpha_prior must be one of {ALPHA_PRIORS}, got {self.alpha_prior!r}",
        )
        require(
            self.transition in TRANSITIONS, f"mslc.transition must be one of {TRANSITIONS}, got {self.transition!r}"
        )
        require(self.trusted_passes >= 0, f"mslc.trusted_passes must be >= 0 (0: none), got {self.trusted_passes}")


@dataclass
class MWNetSettings:
    """``mwnet.*``: Meta-Weight-Net's weight net (1 → hidden → 1 on the loss) and its virtual step."""

    lr: float = 1e-3  # Adam lr of the weight net
    weight_decay: float = 1e-4  # of the weight net
    hidden: int = 100
    virtual_lr_scale: float = 1.0  # virtual-step lr = scale × the classifier's lr
    virtual_lr: str = "current"  # current: that lr as it decays; initial: optim.lr throughout

    def __post_init__(self) -> None:
        require(self.lr > 0 and self.virtual_lr_scale > 0, "mwnet.lr and mwnet.virtual_lr_scale must be > 0")
        require(self.weight_decay >= 0, f"mwnet.weight_decay must be >= 0, got {self.weight_decay}")
        require(self.hidden >= 1, f"mwnet.hidden must be >= 1, got {self.hidden}")
        require(self.virtual_lr in VIRTUAL_LRS, f"mwnet.virtual_lr must be current|initial, got {self.virtual_lr!r}")


@dataclass
class GCESettings:
    """``gce.*``: generalized cross entropy."""

    q: float = 0.7

    def __post_init__(self) -> None:
        require(0 < self.q <= 1, f"gce.q must be in (0, 1], got {self.q}")


@dataclass
class BootstrapSettings:
    """``bootstrap.*``: both bootstrapping variants."""

    beta: float = 0.0  # weight of the given label; 0: the paper's 0.95 (soft) / 0.8 (hard)

    def __post_init__(self) -> None:
        require(0 <= self.beta <= 1, f"bootstrap.beta must be in [0, 1], got {self.beta}")


@dataclass
class JointSettings:
    """``joint.*``: Joint Optimization's loss weights."""

    alpha: float = 1.2  # weight of the class-prior term
    beta: float = 0.8  # weight of the entropy term

    def __post_init__(self) -> None:
        require(self.alpha >= 0 and self.beta >= 0, "joint.alpha and joint.beta must be >= 0")


@dataclass
class FineTuneSettings:
    """``finetune.*``: CE, then fine-tuning on the clean meta set."""

    epochs: int = 1  # the last epochs train on the clean meta set only

    def __post_init__(self) -> None:
        require(self.epochs >= 1, f"finetune.epochs must be >= 1, got {self.epochs}")


#: section name → settings class: the config has one section each (see :class:`Config`).
SECTIONS = {
    "mslc": MSLCSettings,
    "mwnet": MWNetSettings,
    "gce": GCESettings,
    "bootstrap": BootstrapSettings,
    "joint": JointSettings,
    "finetune": FineTuneSettings,
}

#: keys the config had before each method owned its settings → where they are now.
RENAMED = {
    f"meta.{k}": f"mslc.{k}"
    for k in (
        "corrector",
        "loss_mode",
        "refresh",
        "beta_lr",
        "grad",
        "meta_every",
        "meta_scope",
        "fixed_beta",
        "grad_impl",
        "lagged",
        "alpha_prior",
        "transition",
        "trusted_passes",
    )
}
RENAMED.update(
    {
        "meta.alpha_lr": "mslc.alpha_lr (MW-Net's weight net: mwnet.lr)",
        "meta.weight_decay": "mslc.weight_decay (MW-Net's: mwnet.weight_decay)",
        "meta.hidden": "mslc.hidden (MW-Net's: mwnet.hidden)",
        "meta.virtual_lr_scale": "mslc.virtual_lr_scale (MW-Net's: mwnet.virtual_lr_scale)",
        "meta.virtual_lr": "mslc.virtual_lr (MW-Net's: mwnet.virtual_lr)",
        "meta.gce_q": "gce.q",
        "meta.bootstrap_beta": "bootstrap.beta",
        "meta.joint_alpha": "joint.alpha",
        "meta.joint_beta": "joint.beta",
        "meta.finetune_epochs": "finetune.epochs",
    }
)


@dataclass(frozen=True)
class MethodInfo:
    """One built-in method, declared.

    name : the ``meta.method`` value; label : how tables name it; summary : one line for ``--help``;
    impl : ``module:Class`` of its implementation; section : its settings' config section (None: no keys
    of its own); uses_warmup : ``meta.warmup_epochs`` of CE first; writes_labels : what it trains on
    becomes the bank's ỹ; uses_corrector : it trains MSLC's corrector (the others build none);
    tunable : the keys a sweep may vary; export : how ``run.export=auto`` exports its labels
    (``window``: the mean soft labels of the epochs clean validation cannot tell apart, for a
    table of corrected soft labels; ``latest``: the latest of them, for a table that is the
    model's prediction, which the last low-lr epochs improve).
    """

    name: str
    label: str
    summary: str
    impl: str
    section: str | None = None
    uses_warmup: bool = True
    writes_labels: bool = True
    uses_corrector: bool = False
    tunable: tuple[str, ...] = ("meta.warmup_epochs",)
    export: str = "latest"
    extra_checks: tuple = field(default=(), compare=False)

    def config_error(self, cfg) -> str | None:
        """Why ``cfg`` (a :class:`~pipeline.training.settings.config.Config`) cannot run this method, or None."""
        if self.uses_warmup and cfg.meta.warmup_epochs >= cfg.optim.epochs:
            return f"meta.warmup_epochs ({cfg.meta.warmup_epochs}) must be < optim.epochs ({cfg.optim.epochs})"
        for check in self.extra_checks:
            if (why := check(cfg)) is not None:
                return why
        return None

    def load(self) -> type:
        """The implementing class (imports it, and torch)."""
        module, _, cls = self.impl.partition(":")
        return getattr(importlib.import_module(module), cls)

    def __call__(self, cfg, device):
        """The method built for a run (what calling a registered class does)."""
        return self.load()(cfg, device)


def _finetune_fits(cfg) -> str | None:
    if cfg.finetune.epochs >= cfg.optim.epochs:
        return f"finetune.epochs ({cfg.finetune.epochs}) must be < optim.epochs ({cfg.optim.epochs})"
    return None


_IMPL = "pipeline.training.methods.registry"
MSLC_TUNABLE = ("meta.warmup_epochs", "mslc.alpha_lr", "mslc.beta_lr", "mslc.virtual_lr_scale")

METHODS: dict = {
    m.name: m
    for m in (
        MethodInfo(
            "mslc",
            "MSLC",
            "The paper's Meta Soft Label Corrector: soft labels from α_net and β_net, meta-learned.",
            f"{_IMPL}:MSLC",
            "mslc",
            uses_corrector=True,
            tunable=MSLC_TUNABLE,
            export="window",
        ),
        MethodInfo(
            "ce",
            "CE",
            "Cross-entropy on the given labels throughout, no correction.",
            f"{_IMPL}:CE",
            uses_warmup=False,
            writes_labels=False,
            tunable=(),
        ),
        MethodInfo(
            "finetune",
            "Fine-tuning",
            "CE, then the last finetune.epochs epochs on the clean meta set.",
            f"{_IMPL}:FineTune",
            "finetune",
            uses_warmup=False,
            writes_labels=False,
            tunable=(),
            extra_checks=(_finetune_fits,),
        ),
        MethodInfo(
            "gce",
            "GCE",
            "Generalized cross-entropy (gce.q) on the given labels throughout.",
            f"{_IMPL}:GCE",
            "gce",
            uses_warmup=False,
            writes_labels=False,
            tunable=(),
        ),
        MethodInfo(
            "glc",
            "GLC",
            "Gold Loss Correction: a corruption matrix from the clean set corrects the loss.",
            f"{_IMPL}:GLC",
        ),
        MethodInfo(
            "mwnet",
            "MW-Net",
            "Meta-Weight-Net: per-sample loss weights from a meta-learned weight net.",
            f"{_IMPL}:MWNet",
            "mwnet",
            tunable=("meta.warmup_epochs", "mwnet.lr", "mwnet.virtual_lr_scale"),
        ),
        MethodInfo(
            "bootstrap-soft",
            "Bootstrap (soft)",
            "Soft bootstrapping: target β·given + (1 − β)·prediction (β 0.95).",
            f"{_IMPL}:BootstrapSoft",
            "bootstrap",
        ),
        MethodInfo(
            "bootstrap-hard",
            "Bootstrap (hard)",
            "Hard bootstrapping: target β·given + (1 − β)·one-hot of the prediction (β 0.8).",
            f"{_IMPL}:BootstrapHard",
            "bootstrap",
        ),
        MethodInfo(
            "joint-opt",
            "Joint Optimization",
            "Joint Optimization: labels replaced by the model's predictions, with prior and entropy terms.",
            f"{_IMPL}:JointOpt",
            "joint",
        ),
        MethodInfo(
            "u-correction",
            "U-correction (no mixup)",
            "U-correction without mixup: a loss mixture model weights hard bootstrapping.",
            f"{_IMPL}:UCorrection",
        ),
    )
}


def summary(entry) -> str:
    """An entry's one line for ``--help``: a :class:`MethodInfo`'s ``summary``, a class's docstring's first line."""
    text = (entry.summary if isinstance(entry, MethodInfo) else entry.__doc__ or "").strip()
    return text.splitlines()[0] if text else ""


def uses_corrector(name: str) -> bool:
    return bool(getattr(METHODS[name], "uses_corrector", False))


def export_mode(cfg) -> str:
    """``run.export`` of ``cfg`` resolved: ``auto`` becomes the method's own (``MethodInfo.export``;
    a registered class may declare ``export`` too, else ``latest``)."""
    if cfg.run.export != "auto":
        return cfg.run.export
    return getattr(METHODS[cfg.meta.method], "export", "latest")
