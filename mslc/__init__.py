"""MSLC: the Meta Soft Label Corrector (Wu et al., 2020), in plain PyTorch.

This package holds the algorithm only and imports nothing but torch and numpy:
noise models, the clean meta split, the corrector networks, the soft-label
formula, the bilevel meta step, the soft-label bank, metrics and models.
"""

from mslc.bank import LocalBank, SoftLabelBank
from mslc.corrector import ClassMLP, Corrector, LossMLP, soft_labels
from mslc.meta_step import StepResult, ce_step, lookahead_meta_loss, mslc_step, real_step
from mslc.noise import NoisyLabels, corrupt, instance_dependent, make_transition
from mslc.splits import Split, balanced_split

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
