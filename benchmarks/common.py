"""What every benchmark does with its table: print it and write it as Markdown and JSON; the
paper's MSLC settings the comparison benchmarks pin."""

from __future__ import annotations

import json
from pathlib import Path

# The paper's corrector at the paper's settings (θ's Adam lr 1e-3 and weight decay 1e-4, the
# virtual lr decaying with the classifier's; no trusted samples in training, the raw prediction in
# Eq. 6, α = α_net(·); the labels of one epoch exported, not a mean over epochs), whatever the
# presets and run.export=auto recommend to users. Every run of the
# comparison benchmarks starts from these, so a preset's default cannot move their rows (the
# corrector is built for every method and draws from the RNG before MW-Net's weight net).
PAPER_SETTINGS = [
    "mslc.corrector=loss",
    "mslc.alpha_lr=1e-3",
    "mslc.beta_lr=1e-3",
    "mslc.weight_decay=1e-4",
    "mslc.virtual_lr=current",
    "mslc.trusted_passes=0",
    "mslc.transition=none",
    "mslc.alpha_prior=none",
    "mslc.posterior_mix=0",
    "run.export=latest",
]


def label_epochs(row: dict) -> list[int]:
    """The epochs whose soft labels a benchmark row's run exported (``labels_epochs``; rows
    from before the window export name one, ``labels_epoch``)."""
    return list(row.get("labels_epochs") or [row["labels_epoch"]])


def publish(out: str | Path, markdown: str, payload: dict, *, quiet: bool = False) -> None:
    """Print ``markdown`` (unless ``quiet``: a partial table written while a benchmark runs) and
    write ``out.md`` and ``out.json`` (``out`` without extension)."""
    if not quiet:
        print(markdown)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(markdown)
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1))
