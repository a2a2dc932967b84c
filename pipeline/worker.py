"""One worker of a training job: the training run (:mod:`pipeline.training`) with the review's
outputs (:mod:`pipeline.review`) at its epochs' ends and its end. The two packages do not
import each other; this module, above both, puts them together for the entry points
(``pipeline/train.py``, ``tune/sweep.py``), the benchmarks and the tests.
"""

from __future__ import annotations

import torch

from pipeline.review.outputs import ReviewOutputs
from pipeline.training.run import loop
from pipeline.training.settings.config import Config


def review_outputs(cfg: Config) -> ReviewOutputs:
    """The review's outputs as the ``run.*`` keys ask for them."""
    r = cfg.run
    return ReviewOutputs(
        relabel_precision=r.relabel_precision, relabel_threshold=r.relabel_threshold, page=r.report, top=r.report_top
    )


def run(cfg: Config, reporter, device: torch.device | None = None, *, log=print) -> dict:
    """The whole run in this process (:func:`pipeline.training.run.loop.run`) with the
    review's outputs: ``relabel``, ``budget`` and (``run.report``) ``report`` join its result."""
    return loop.run(cfg, reporter, device, log=log, extras=(review_outputs(cfg),))


def train_loop_per_worker(config: dict) -> None:
    """What Ray Train runs on each worker (``build_trainer`` is given this function)."""
    cfg = Config.from_dict(config)
    loop.train_loop_per_worker(config, extras=(review_outputs(cfg),))
