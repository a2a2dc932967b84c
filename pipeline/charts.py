"""The review's pictures as PNG bytes (matplotlib, no display): a confusion matrix, value
distributions, curves over epochs and per-class rates."""

from __future__ import annotations

import io
import math

import numpy as np

MAX_TICK_CLASSES = 30  # above this many classes, axes carry no class names


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _plt()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def confusion_png(
    matrix: np.ndarray, classes: list[str], *, title: str, xlabel: str, ylabel: str, counts: bool = False
) -> bytes:
    """A row-normalized ``(C, C)`` count matrix (rows: ``ylabel``, columns: ``xlabel``);
    ``counts`` writes each non-zero cell's count in it (for at most 15 classes)."""
    plt = _plt()
    c = len(classes)
    rows = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    side = 4.5 if c <= 15 else min(12.0, 0.12 * c + 3)
    fig, ax = plt.subplots(figsize=(side + 0.5, side), dpi=80)
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if c <= MAX_TICK_CLASSES:
        ax.set_xticks(range(c), [n[:10] for n in classes], rotation=90, fontsize=6)
        ax.set_yticks(range(c), [n[:10] for n in classes], fontsize=6)
    if counts and c <= 15:
        for (i, j), v in np.ndenumerate(matrix):
            if v:
                ax.text(
                    j,
                    i,
                    str(int(v)),
                    ha="center",
                    va="center",
                    fontsize=5,
                    color="white" if rows[i, j] > 0.5 else "black",
                )
    return _png(fig)


def histogram_png(groups: dict[str, np.ndarray], *, title: str, xlabel: str, bins: int = 40) -> bytes:
    """One histogram per named group of values in [0, 1] (NaN left out), overlaid."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=80)
    edges = np.linspace(0.0, 1.0, bins + 1)
    for name, values in groups.items():
        v = np.asarray(values, dtype=np.float64)
        v = v[~np.isnan(v)]
        ax.hist(v, bins=edges, alpha=0.55, label=f"{name} ({v.size})")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    ax.legend(fontsize=7)
    return _png(fig)


def curves_png(history: list[dict], *, labels_epochs: list[int]) -> bytes:
    """Validation and test accuracy and the labels' accuracy (where known) over epochs; the
    warm-up shaded and the epochs whose labels were exported (their mean ỹ) marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=80)
    epochs = [h["epoch"] for h in history]
    for key, name in (
        ("val_acc", "validation accuracy"),
        ("test_acc", "test accuracy"),
        ("corrected_all", "label accuracy (argmax ỹ)"),
    ):
        ys = [h.get(key) for h in history]
        ys = [math.nan if y is None else 100 * y for y in ys]
        if not all(math.isnan(y) for y in ys):
            ax.plot(epochs, ys, marker="o", ms=3, label=name)
    warm = [h["epoch"] for h in history if h.get("phase") == "warmup"]
    if warm:
        ax.axvspan(min(warm) - 0.5, max(warm) + 0.5, color="0.9", label="warm-up")
    name = f"labels exported (epoch{'s' if len(labels_epochs) > 1 else ''} {', '.join(map(str, labels_epochs))})"
    for i, e in enumerate(labels_epochs):
        ax.axvline(e, color="k", ls="--", lw=1, label=None if i else name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("%")
    ax.legend(fontsize=7, loc="best")
    return _png(fig)


def rates_png(classes: list[str], series: dict[str, list[float]], *, title: str) -> bytes:
    """Per-class rates in [0, 1] as grouped bars, one series per name (NaN drawn as 0)."""
    plt = _plt()
    c = len(classes)
    fig, ax = plt.subplots(figsize=(min(12.0, 1.5 + 0.45 * c), 3.4), dpi=80)
    width, top = 0.8 / max(len(series), 1), 1.0
    for n, (name, values) in enumerate(series.items()):
        v = np.nan_to_num(np.asarray(values, dtype=np.float64) * 100)
        ax.bar(np.arange(c) + n * width - 0.4 + width / 2, v, width, label=name)
        top = max(top, float(v.max(initial=0.0)))
    ax.set_ylim(0, top * 1.35)  # room for the legend above the bars
    if c <= MAX_TICK_CLASSES:
        ax.set_xticks(range(c), [n[:10] for n in classes], rotation=90, fontsize=6)
    ax.set_ylabel("%")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)


def budget_png(budget: dict) -> bytes:
    """The review budget (:func:`pipeline.review.select.budget`): estimated precision of the
    flags at or above each confidence threshold (and the true one where known), with the
    number of flags on a second axis and the chosen threshold marked."""
    plt = _plt()
    rows = budget["rows"]
    t = np.array([r["threshold"] for r in rows])
    fig, ax = plt.subplots(figsize=(6.0, 3.4), dpi=80)
    ax.plot(t, [100 * r["precision"] for r in rows], marker="o", ms=3, label="estimated precision (no true labels)")
    if "lower" in rows[0]:
        low = [100 * r["lower"] if r["flags"] else np.nan for r in rows]
        ax.plot(
            t, low, lw=0.8, ls=":", color="tab:blue", label="its 95% lower bound, all cuts at once (the cut's test)"
        )
    if "true_precision" in rows[0]:
        ax.plot(t, [100 * r["true_precision"] for r in rows], marker="x", ms=3, ls="--", label="true precision")
    ax.axhline(100 * budget["target"], color="grey", lw=0.8, ls=":")
    ax.axvline(budget["threshold"], color="tab:red", lw=0.8, label=f"relabel.csv cut: {budget['threshold']:.2f}")
    ax.set_xlabel("confidence threshold (corrected label's probability)")
    ax.set_ylabel("% of flags right")
    ax.legend(fontsize=7, loc="lower right")
    ax2 = ax.twinx()
    ax2.bar(t, [r["flags"] for r in rows], width=0.035, alpha=0.25, color="tab:green")
    ax2.set_ylabel("flags at or above", fontsize=8)
    ax.set_title("review budget", fontsize=9)
    return _png(fig)
