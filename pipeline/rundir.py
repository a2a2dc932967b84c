"""A run directory: the contract between a training run (which writes it) and whatever reads
what it left behind — the review page, ``pipeline/report.py``, the end-of-run summary, the
benchmarks, a Tune sweep and the user.

Layout of a run directory ``run.storage_path/run.name``::

    metrics.json               per-epoch records, the config, the shard directory, the noise spec
    corrected_labels.parquet   the purified label table (one row per training sample)
    model.pt                   the final model's state dict
    relabel.csv                the flags to review, cut at the chosen confidence
    review_budget.json         estimated precision of the flags per confidence threshold
    noise_matrix.json          given → corrected counts per class pair
    heldout_predictions.npz    out-of-sample class probabilities of every training sample (and
                               of the clean validation split) from the cross-fitted models
    report/index.html          the review page (and report/numbers.json, its charts)
    tensorboard/               TensorBoard event files
    checkpoint_epoch_EEEE/     a checkpoint (state.pt); ``checkpoint_epoch_EEEE_step_SSSSSS/``
                               inside an epoch, ``checkpoint_best/`` the best by validation
    .crash-injected            ``scale.crash_at_step`` has fired (tests of recovery)

Nothing here imports training or review: both use this module for every name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

METRICS = "metrics.json"
LABELS = "corrected_labels.parquet"
MODEL = "model.pt"
RELABEL = "relabel.csv"
BUDGET = "review_budget.json"
MATRIX = "noise_matrix.json"
HELDOUT = "heldout_predictions.npz"
REPORT_DIR = "report"
REPORT_PAGE = "index.html"
REPORT_NUMBERS = "numbers.json"
TENSORBOARD = "tensorboard"
STATE_FILE = "state.pt"
CHECKPOINT_PREFIX = "checkpoint_"
BEST_DIR = "checkpoint_best"
CRASH_MARKER = ".crash-injected"
LOCAL_CHECKPOINTS = "checkpoints"
LOCAL_BEST = "best"


def checkpoint_name(epoch: int, step: int | None = None) -> str:
    """``epoch_EEEE`` or, inside an epoch, ``epoch_EEEE_step_SSSSSS`` (what follows
    :data:`CHECKPOINT_PREFIX`; names sort in training order)."""
    return f"epoch_{epoch:04d}" if step is None else f"epoch_{epoch:04d}_step_{step:06d}"


def checkpoint_order(name: str) -> tuple[int, float]:
    """``(epoch, step)`` of a :func:`checkpoint_name`: an epoch's end sorts after its steps."""
    parts = name.split("_")
    return int(parts[1]), float(parts[3]) if len(parts) > 3 else float("inf")


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory (nothing is created or read here).

    Parameters
    ----------
    path : the run directory, ``run.storage_path/run.name``.
    """

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def of(cls, storage_path: str | Path, name: str) -> RunDir:
        """The run directory of ``run.storage_path`` and ``run.name``."""
        return cls(Path(storage_path) / name)

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def labels(self) -> Path:
        return self.path / LABELS

    @property
    def model(self) -> Path:
        return self.path / MODEL

    @property
    def relabel(self) -> Path:
        return self.path / RELABEL

    @property
    def budget(self) -> Path:
        return self.path / BUDGET

    @property
    def matrix(self) -> Path:
        return self.path / MATRIX

    @property
    def heldout(self) -> Path:
        return self.path / HELDOUT

    @property
    def report_dir(self) -> Path:
        return self.path / REPORT_DIR

    @property
    def report(self) -> Path:
        return self.path / REPORT_DIR / REPORT_PAGE

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD

    @property
    def crash_marker(self) -> Path:
        return self.path / CRASH_MARKER

    @property
    def best(self) -> Path:
        return self.path / BEST_DIR

    @property
    def local_checkpoints(self) -> Path:
        return self.path / LOCAL_CHECKPOINTS

    def checkpoint(self, epoch: int, step: int | None = None) -> Path:
        return self.path / (CHECKPOINT_PREFIX + checkpoint_name(epoch, step))

    def checkpoints(self) -> list[Path]:
        """The complete checkpoints (those holding :data:`STATE_FILE`), oldest first."""
        found = [p for p in self.path.glob(CHECKPOINT_PREFIX + "epoch_*") if (p / STATE_FILE).is_file()]
        return sorted(found, key=lambda p: checkpoint_order(p.name.removeprefix(CHECKPOINT_PREFIX)))
