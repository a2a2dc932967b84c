"""What a run leaves behind: metrics.json, TensorBoard events, the corrected-label Parquet."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mslc.metrics import confusion_matrix
from pipeline.review.charts import confusion_png
from pipeline.storage import atomic_path, atomic_write_text

LAST_K = 5


def _clean(v):
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def _val(h: dict) -> float:
    v = h.get("val_acc")
    return -1.0 if v is None or math.isnan(v) else v


def labels_epoch(history: list[dict]) -> int:
    """The epoch whose soft labels a run exports, chosen without the test set or any true
    label: of the epochs after the warm-up (all, if none is after it), the latest whose
    clean-validation accuracy is within one standard error (``√(p(1−p)/n)``, ``n`` the
    record's ``val_samples``) of the best. Labels keep gathering corrections while the
    model improves, so among epochs validation cannot tell apart the latest is taken;
    without a validation split, the last epoch."""
    pool = [h for h in history if h.get("phase") != "warmup"] or history
    vals = [_val(h) for h in pool]
    best = max(vals)
    if best < 0:
        return pool[-1]["epoch"]
    n = pool[vals.index(best)].get("val_samples") or 0
    se = math.sqrt(best * (1.0 - best) / n) if n else 0.0
    return [h for h, v in zip(pool, vals) if v >= best - se][-1]["epoch"]


LABEL_KEYS = ("corrected_all", "corrected_clean", "corrected_noisy", "detect_precision", "detect_recall", "detect_f1")


def summarize(history: list[dict]) -> dict:
    """Model selection on clean validation (never the test set), the mean of the last 5
    epochs, and which epoch's labels are exported.

    ``best`` is the test accuracy at the epoch with the highest validation accuracy
    (the earliest such epoch on ties); ``last5`` the mean test accuracy of the last
    ``min(5, epochs)`` epochs; ``labels`` the exported labels' epoch (:func:`labels_epoch`)
    and their label metrics where true labels are known.
    """
    if not history:
        return {}
    best_i = int(np.argmax([_val(h) for h in history]))
    last = history[-LAST_K:]
    chosen = history[[h["epoch"] for h in history].index(labels_epoch(history))]
    return {
        "selected_epoch": history[best_i]["epoch"],
        "selected_val_acc": history[best_i]["val_acc"],
        "best_test_acc": history[best_i]["test_acc"],
        "last5_test_acc": float(np.mean([h["test_acc"] for h in last])),
        "last5_epochs": [h["epoch"] for h in last],
        "labels": {"epoch": chosen["epoch"], "selected_by": "latest epoch within 1 s.e. of the best val_acc",
                   **{k: chosen[k] for k in LABEL_KEYS if k in chosen}},
        "final": history[-1],
    }


def write_json_atomic(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(_clean(obj), indent=1))


def write_metrics(run_dir: Path, history: list[dict], extra: dict) -> Path:
    path = run_dir / "metrics.json"
    write_json_atomic(path, {**extra, "summary": summarize(history), "epochs": history})
    return path


def write_corrected_labels(
    path: Path,
    *,
    keys: np.ndarray,
    given: np.ndarray,
    soft: np.ndarray,
    alpha: np.ndarray,
    beta: np.ndarray,
    true: np.ndarray | None,
    epoch: int | None = None,
) -> Path:
    """One row per training sample: index, key, given_label, corrected_label (argmax ỹ),
    corrected_prob, alpha, beta, and true_label / is_noisy (null where unknown).

    ``soft`` (N, C) rows sum to 1; ``alpha``, ``beta`` (N,) NaN where never computed;
    ``true`` (N,) int with -1 for unknown, or None; ``epoch``: the epoch the labels are
    from, kept in the file's metadata (``labels_epoch``). Written to a temp file, then renamed.
    """
    n = len(given)
    corrected = soft.argmax(1)
    known = None if true is None else true >= 0
    table = pa.table(
        {
            "index": pa.array(np.arange(n, dtype=np.int64)),
            "key": pa.array([str(k) for k in keys]),
            "given_label": pa.array(given.astype(np.int64)),
            "corrected_label": pa.array(corrected.astype(np.int64)),
            "corrected_prob": pa.array(soft[np.arange(n), corrected].astype(np.float32)),
            "alpha": pa.array(alpha.astype(np.float32), mask=np.isnan(alpha)),
            "beta": pa.array(beta.astype(np.float32), mask=np.isnan(beta)),
            "true_label": pa.array(np.where(known, true, 0).astype(np.int64), mask=~known)
            if true is not None else pa.nulls(n, pa.int64()),
            "is_noisy": pa.array(given != true, mask=~known) if true is not None else pa.nulls(n, pa.bool_()),
        }
    )
    if epoch is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"labels_epoch": str(epoch).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def confusion_image(matrix: np.ndarray, title: str, classes: list[str]) -> np.ndarray:
    """A row-normalized confusion matrix (rows: true class, columns: label) as an (H, W, 3) uint8 image."""
    from PIL import Image

    png = confusion_png(matrix, classes, title=title, xlabel="label", ylabel="true class")
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


class TensorBoardLog:
    """tensorboardX events under ``run_dir/tensorboard``."""

    def __init__(self, run_dir: Path, classes: list[str]) -> None:
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        self.classes = classes

    def epoch(self, record: dict, *, alpha: np.ndarray, beta: np.ndarray, is_noisy: np.ndarray,
              known: np.ndarray) -> None:
        """Scalars of ``record``; α and β histograms, α split by originally clean / noisy (N,) bool masks."""
        e = record["epoch"]
        for k, v in record.items():
            if isinstance(v, (int, float)) and k != "epoch" and v is not None and not math.isnan(v):
                self.writer.add_scalar(k.replace("_", "/", 1) if k.startswith(("corrected_", "alpha_", "detect_")) else k, v, e)
        for pair, v in (record.get("alpha_pairs") or {}).items():
            for group in ("flipped", "clean"):
                if not math.isnan(v[group]):
                    self.writer.add_scalar(f"alpha_pair/{pair}/{group}", v[group], e)
        for name, arr in (("alpha", alpha), ("beta", beta)):
            vals = arr[~np.isnan(arr)]
            if vals.size:
                self.writer.add_histogram(f"hist/{name}", vals, e)
                if name == "alpha" and known.any():
                    for group, mask in (("clean", known & ~is_noisy), ("noisy", is_noisy)):
                        v = arr[mask & ~np.isnan(arr)]
                        if v.size:
                            self.writer.add_histogram(f"hist/alpha_{group}", v, e)

    def confusion(self, tag: str, true: np.ndarray, labels: np.ndarray, step: int) -> None:
        m = confusion_matrix(true, labels, len(self.classes))
        img = confusion_image(m, tag, self.classes)
        self.writer.add_image(f"confusion/{tag}", img, step, dataformats="HWC")

    def image(self, tag: str, img: np.ndarray, step: int) -> None:
        """An (H, W, 3) uint8 image, e.g. the grid of the top suspected errors."""
        self.writer.add_image(tag, img, step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()
