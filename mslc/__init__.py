"""MSLC: the Meta Soft Label Corrector (Wu et al., 2020), in plain PyTorch.

This package holds the algorithm only and imports nothing but torch and numpy:
noise models, the clean meta split, the corrector networks, the soft-label
formula, the bilevel meta step, the soft-label bank, metrics, the truth-free
estimate of how right the corrections are (mslc.estimate) and models.
"""

_EXPORTS = {
    "ClassMLP": "mslc.corrector",
    "Corrector": "mslc.corrector",
    "LocalBank": "mslc.bank",
    "LossMLP": "mslc.corrector",
    "NoisyLabels": "mslc.noise",
    "SoftLabelBank": "mslc.bank",
    "Split": "mslc.splits",
    "StepResult": "mslc.meta_step",
    "balanced_split": "mslc.splits",
    "ce_step": "mslc.meta_step",
    "corrupt": "mslc.noise",
    "instance_dependent": "mslc.noise",
    "lookahead_meta_loss": "mslc.meta_step",
    "make_transition": "mslc.noise",
    "mslc_step": "mslc.meta_step",
    "real_step": "mslc.meta_step",
    "soft_labels": "mslc.corrector",
}


def __getattr__(name: str):
    """The package's names, imported on first use: ``import mslc.options`` (the option
    names a config is validated against) then needs no torch."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mslc' has no attribute {name!r}")


__all__ = [
    "ClassMLP",
    "Corrector",
    "LocalBank",
    "LossMLP",
    "NoisyLabels",
    "SoftLabelBank",
    "Split",
    "StepResult",
    "balanced_split",
    "ce_step",
    "corrupt",
    "instance_dependent",
    "lookahead_meta_loss",
    "make_transition",
    "mslc_step",
    "real_step",
    "soft_labels",
]
