"""The review's part of a run's outputs: the TensorBoard grid of the top suspected errors at
each epoch's end, and at the run's end ``review_budget.json``, ``noise_matrix.json``,
``relabel.csv`` and the review page — read from the run directory and the shards (the two
contracts), never from training's internals. The training run calls it through its
``extras`` (:class:`pipeline.training.run.outputs.OutputExtra`); :mod:`pipeline.worker` passes it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import PipelineError
from pipeline.review import report
from pipeline.review.select import RELABEL_PRECISION
from pipeline.rundir import RunDir


@dataclass(frozen=True)
class ReviewOutputs:
    """What to write (the ``run.*`` keys of the same names).

    relabel_precision : the estimated precision ``relabel.csv``'s cut is chosen for;
    relabel_threshold : a fixed cut instead (None: chosen); page : write ``report/``;
    top : cards per gallery of the page.
    """

    relabel_precision: float = RELABEL_PRECISION
    relabel_threshold: float | None = None
    page: bool = True
    top: int = 16

    def epoch_image(self, shard_dir: str, manifest: dict, given: np.ndarray, soft: np.ndarray) -> np.ndarray | None:
        return report.suspects_grid(shard_dir, manifest, given, soft)

    def finish(self, run_dir: RunDir, shard_dir: str, log) -> dict:
        """``relabel.csv`` and the estimates and, unless ``page`` is off, the review page,
        from the labels just exported. A page that cannot be made (a training shard gone
        since it was read) is logged, not fatal: the model and the labels are written."""
        run = report.load_run(run_dir.path, shard_dir)
        budget = report.write_estimates(run, target=self.relabel_precision, threshold=self.relabel_threshold)
        out = {"relabel": str(report.write_relabel(run, threshold=budget["relabel_threshold"])), "budget": budget}
        if self.page:
            try:
                out["report"] = str(report.write_report(run, top=self.top, log=log))
            except PipelineError as e:
                log(f"report not written: {e}")
        return out
