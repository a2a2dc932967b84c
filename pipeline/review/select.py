"""What a review shows, as pure functions of the corrected-label table: the numbers, the
samples of each gallery, the flagged rows of the relabel file.

A *table* here is the run's ``corrected_labels.parquet`` as arrays (:func:`read_table`):
``index (N,) int64``, ``key (N,) str``, ``given (N,)``, ``corrected (N,) int64``, ``prob (N,)
float64`` (the corrected label's probability in ỹ), ``est_correct (N,) float64`` (the estimated
probability that the corrected label is right, computed without true labels), with
``est_cautious (N,) float64`` (the same estimate with its recalibration fitted out of sample,
which the budget's bound also reads; ``est_correct`` where the table has none), ``calibration``
(the clean-split bins it was calibrated by, or None) and ``calibration_bin (N,) int64`` (each
sample's bin, -1 where none), ``alpha``, ``beta`` ``(N,) float64`` (NaN where
never computed) and ``true (N,) int64`` (-1 where unknown). A sample is
*flagged* (a suspected label error) when its corrected label differs from its given one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mslc.metrics import (
    LOWER_BOUND_Z,
    choose_threshold,
    confusion_matrix,
    corrected_label_accuracy,
    detection_scores,
    precision_se,
    review_budget,
    wilson_interval,
)
from pipeline.errors import PipelineError

COLUMNS = ("index", "key", "given_label", "corrected_label", "corrected_prob", "alpha", "beta", "true_label")


def read_table(path: str | Path) -> dict[str, np.ndarray]:
    """A run's ``corrected_labels.parquet`` → the arrays described in the module's docstring,
    plus ``labels_epoch`` (int, or None where the file does not say) and ``labels_epochs``
    (the epochs whose mean ỹ the table holds; ``[labels_epoch]`` for a table of one epoch)."""
    import pyarrow.parquet as pq

    try:
        t = pq.read_table(path)
    except Exception as e:
        raise PipelineError(f"{path}: cannot read the corrected-label table ({e})") from None
    absent = [c for c in COLUMNS if c not in t.column_names]
    if absent:
        raise PipelineError(f"{path}: no column {absent[0]!r}: not a corrected-label table of this pipeline")

    def floats(name):
        return t.column(name).to_numpy(zero_copy_only=False).astype(np.float64)  # nulls → NaN

    true = t.column("true_label").fill_null(-1).to_numpy().astype(np.int64)
    epoch = (t.schema.metadata or {}).get(b"labels_epoch")
    epochs = (t.schema.metadata or {}).get(b"labels_epochs")
    prob = floats("corrected_prob")
    calibration, where = _calibration(t, path)
    return {
        "index": t.column("index").to_numpy().astype(np.int64),
        # est_correct: a table from before it was written stands in ỹ's own probability
        "est_correct": floats("est_correct") if "est_correct" in t.column_names else prob,
        # the same estimate with the recalibration fitted out of sample: the budget's bound reads the lower
        "est_cautious": floats("est_correct_cautious")
        if "est_correct_cautious" in t.column_names
        else (floats("est_correct") if "est_correct" in t.column_names else prob),
        "est_correct_by": ((t.schema.metadata or {}).get(b"est_correct_by") or b"soft label").decode(),
        # the clean-split calibration behind est_correct (None: uncalibrated, no lower bound)
        "calibration": calibration,
        "calibration_bin": where,
        "key": np.asarray(t.column("key").to_pylist(), dtype=object),
        "given": t.column("given_label").to_numpy().astype(np.int64),
        "corrected": t.column("corrected_label").to_numpy().astype(np.int64),
        "prob": prob,
        "alpha": floats("alpha"),
        "beta": floats("beta"),
        "true": true,
        "labels_epoch": int(epoch) if epoch else None,
        "labels_epochs": [int(e) for e in json.loads(epochs)] if epochs else ([int(epoch)] if epoch else []),
    }


def _calibration(t, path) -> tuple[list[dict] | None, np.ndarray]:
    """The table's clean-split calibration bins (metadata ``est_correct_calibration``; None
    where absent) and each row's ``calibration_bin`` (-1 where the column is absent)."""
    raw = (t.schema.metadata or {}).get(b"est_correct_calibration")
    try:
        bins = json.loads(raw) if raw else None
        if bins is not None and not all({"lo", "hi", "weight", "estimated", "true"} <= set(b) for b in bins):
            raise ValueError("a bin lacks lo, hi, weight, estimated or true")
    except (ValueError, TypeError) as e:
        raise PipelineError(
            f"{path}: metadata est_correct_calibration is not a list of calibration bins ({e})"
        ) from None
    if "calibration_bin" not in t.column_names:
        return bins, np.full(t.num_rows, -1, dtype=np.int64)
    where = t.column("calibration_bin").to_numpy().astype(np.int64)
    if where.size and (where.min() < -1 or where.max() >= (len(bins) if bins is not None else 0)):
        raise PipelineError(
            f"{path}: column calibration_bin holds {int(where.min())}..{int(where.max())}, "
            f"outside -1..{(len(bins) if bins is not None else 0) - 1} (the table's calibration bins)"
        )
    return bins, where


def flagged(table: dict) -> np.ndarray:
    """(N,) bool: the corrected label differs from the given one."""
    return table["corrected"] != table["given"]


def _share(count: int, total: int) -> float:
    return count / total if total else float("nan")


def review_numbers(table: dict, num_classes: int, *, computed_budget: dict | None = None) -> dict:
    """The report's numbers, computed from ``table`` alone (``computed_budget``: its
    :func:`budget` where already computed).

    Returns ``samples``, ``flagged``, ``flagged_share``, ``est_flag_precision`` (the estimated
    share of flags that are right) and the review budget's cut for the default precision
    (``budget_threshold``, ``budget_flags``, ``budget_precision`` and its lower bound
    ``budget_lower``, NaN where uncalibrated); per given class ``c`` (list of
    dicts): ``given`` (samples given ``c``), ``flagged`` (of those, flagged) and
    ``est_noise_rate`` (their share: the estimated rate of wrong labels among samples
    given ``c``); ``top_flips``: the most frequent ``(given, corrected, count)``. Where
    some true labels are known (``known`` > 0), on those samples: ``true_noise_rate``,
    per class ``true_noise_rate`` (of the known samples given ``c``, the share whose
    label is wrong), ``detect_precision`` / ``recall`` / ``f1`` of flagging as a detector
    of wrong labels, and ``label_acc_given`` / ``label_acc_corrected`` (with ``_clean`` and
    ``_noisy``: on the samples whose given label was right / wrong).
    """
    n, c = len(table["given"]), num_classes
    flag = flagged(table)
    given, corrected, true = table["given"], table["corrected"], table["true"]
    out: dict = {
        "samples": n,
        "flagged": int(flag.sum()),
        "flagged_share": _share(int(flag.sum()), n),
        "known": int((true >= 0).sum()),
        "est_flag_precision": float(table["est_correct"][flag].mean()) if flag.any() else float("nan"),
    }
    b = computed_budget if computed_budget is not None else budget(table)
    cut = [r for r in b["rows"] if r["threshold"] == b["threshold"]]
    out.update(
        {
            "budget_threshold": b["threshold"],
            "budget_flags": cut[0]["flags"] if cut else 0,
            "budget_precision": cut[0]["precision"] if cut else float("nan"),
            "budget_lower": cut[0].get("lower", float("nan")) if cut else float("nan"),
        }
    )
    per_given = np.bincount(given, minlength=c)
    per_flag = np.bincount(given[flag], minlength=c)
    classes = [
        {
            "class": k,
            "given": int(per_given[k]),
            "flagged": int(per_flag[k]),
            "est_noise_rate": _share(int(per_flag[k]), int(per_given[k])),
        }
        for k in range(c)
    ]
    flips = confusion_matrix(given[flag], corrected[flag], c)
    order = np.argsort(-flips, axis=None, kind="stable")[:10]
    out["top_flips"] = [(int(i // c), int(i % c), int(flips.flat[i])) for i in order if flips.flat[i] > 0]
    known = true >= 0
    if known.any():
        noisy = (given != true) & known
        out["true_noise_rate"] = _share(int(noisy.sum()), int(known.sum()))
        kg = np.bincount(given[known], minlength=c)
        kn = np.bincount(given[noisy], minlength=c)
        for k in range(c):
            classes[k]["true_noise_rate"] = _share(int(kn[k]), int(kg[k]))
        out.update({f"detect_{k}": v for k, v in detection_scores(flag[known], noisy[known]).items()})
        eye = np.eye(c)
        for name, labels in (("given", given), ("corrected", corrected)):
            acc = corrected_label_accuracy(eye[labels[known]], true[known], noisy[known])
            out.update({f"label_acc_{name}" + ("" if k == "all" else f"_{k}"): v for k, v in acc.items()})
    out["classes"] = classes
    return out


RELABEL_PRECISION = 0.95  # the default relabel.csv keeps the flags whose estimated precision is at least this


def budget(table: dict, *, target: float = RELABEL_PRECISION) -> dict:
    """The review budget, without true labels: per confidence threshold (0, 0.05, … 0.95)
    the flags at or above it and the estimated share of them that are right (the mean of
    ``est_correct``), the expected right and wrong relabels; where the estimate was calibrated
    on the clean validation split, the out-of-sample estimate (``cautious``: the mean
    ``est_cautious``), the standard error from that split's size (``se``,
    :func:`mslc.metrics.precision_se`) and the 95% lower bound of the lower of the two
    (``lower``, one-sided, for all the cuts at once); ``threshold``: the lowest threshold whose lower bound is at least ``target``
    (without a calibration: whose estimate is, and every higher one's too). Where true labels
    are known, ``true_precision`` per row, to check the estimate."""
    fl = flagged(table)
    rows = review_budget(table["prob"], fl, table["est_correct"])
    cautious = review_budget(table["prob"], fl, table.get("est_cautious", table["est_correct"]))
    cal = table.get("calibration")
    if cal is not None:
        se = precision_se(table["prob"], fl, table["calibration_bin"], cal, estimate=table["est_correct"])
        for row, c, s in zip(rows, cautious, se):
            row["cautious"] = c["precision"]
            row["se"], row["lower"] = float(s), _lower(_cautious(row["precision"], c["precision"]), float(s))
    known = table["true"] >= 0
    if known.all():
        right = (table["corrected"] == table["true"]).astype(np.float64)
        for row, true_row in zip(rows, review_budget(table["prob"], fl, right)):
            row["true_precision"] = true_row["precision"]
    return {
        "target": target,
        "threshold": choose_threshold(rows, target=target, key="precision" if cal is None else "lower"),
        "chosen_by": "estimated precision"
        if cal is None
        else "95% lower bound of the estimated precision, all cuts at once (the lower of the estimate and its "
        f"out-of-sample recalibration, − {LOWER_BOUND_Z:.3f}·se)",
        "estimated_by": table["est_correct_by"],
        "rows": rows,
    }


def relabel_lower(table: dict, threshold: float, precision: float | None) -> float | None:
    """The 95% lower bound of ``precision``, the estimated precision of the flags at or above
    ``threshold`` (:func:`mslc.metrics.precision_se`; as the budget's rows: from the lower of
    it and the out-of-sample estimate, for all cuts at once); None without flags or without a
    calibrated estimate."""
    if precision is None or table.get("calibration") is None:
        return None
    sel = flagged(table) & (table["prob"] >= threshold)
    if sel.any():
        precision = _cautious(precision, float(table.get("est_cautious", table["est_correct"])[sel].mean()))
    se = precision_se(
        table["prob"],
        flagged(table),
        table["calibration_bin"],
        table["calibration"],
        [threshold],
        estimate=table["est_correct"],
    )
    return _lower(precision, float(se[0]))


def _cautious(precision: float, out_of_sample: float) -> float:
    """The lower of the estimated precision and the out-of-sample one (the first where the second is NaN)."""
    return min(precision, out_of_sample) if np.isfinite(out_of_sample) else precision


def _lower(precision: float, se: float) -> float:
    """The 95% lower bound (:data:`mslc.metrics.LOWER_BOUND_Z`) of an estimated precision with
    standard error ``se``."""
    return precision - LOWER_BOUND_Z * se


def noise_matrix(table: dict, classes: list[str]) -> dict:
    """The estimated noise, as data: ``counts[g][c]`` samples given ``g`` whose corrected
    label is ``c`` (and ``rates``, each row over its given count); per given class the
    flagged share (the estimated noise rate) with a 95% Wilson interval."""
    c = len(classes)
    counts = confusion_matrix(table["given"], table["corrected"], c)
    given = counts.sum(1)
    wrong = given - np.diag(counts)
    lo, hi = wilson_interval(wrong, given)
    rates = counts / np.maximum(given, 1)[:, None]
    return {
        "classes": list(classes),
        "rows": "given label",
        "columns": "corrected label",
        "counts": counts.tolist(),
        "rates": rates.round(6).tolist(),
        "per_class": [
            {
                "class": classes[k],
                "given": int(given[k]),
                "flagged": int(wrong[k]),
                "est_noise_rate": _share(int(wrong[k]), int(given[k])),
                "interval95": [float(lo[k]), float(hi[k])],
            }
            for k in range(c)
        ],
    }


def suspected_errors(table: dict, cls: int, k: int) -> np.ndarray:
    """Rows (positions in ``table``) of the ``k`` flagged samples given class ``cls`` whose
    corrected label is most probable, most probable first (ties: lower index first)."""
    rows = np.flatnonzero(flagged(table) & (table["given"] == cls))
    return rows[np.lexsort((table["index"][rows], -table["prob"][rows]))][:k]


def doubtful_clean(table: dict, cls: int, k: int) -> np.ndarray:
    """Rows of the ``k`` samples given class ``cls`` and not flagged whose label has the
    lowest probability in ỹ (the clean-looking samples a person should check), least first."""
    rows = np.flatnonzero(~flagged(table) & (table["given"] == cls))
    return rows[np.lexsort((table["index"][rows], table["prob"][rows]))][:k]


def top_suspects(given: np.ndarray, soft: np.ndarray, k: int, *, shard_of: np.ndarray, max_shards: int) -> np.ndarray:
    """The ``k`` most confident suspected errors of a soft-label table whose images lie in
    at most ``max_shards`` shards (the cost of showing them is reading those shards).

    given : (N,) int64; soft : (N, C) ỹ; shard_of : (N,) the shard that holds each sample.
    Candidates are taken in order of their corrected label's probability; one in a shard
    not yet chosen is taken while fewer than ``max_shards`` are chosen. Returns sample
    indices, most confident first.
    """
    corrected = soft.argmax(1)
    cand = np.flatnonzero(corrected != given)
    cand = cand[np.argsort(-soft[cand, corrected[cand]], kind="stable")]
    where = np.asarray(shard_of)[cand]
    _, first = np.unique(where, return_index=True)  # each shard's first appearance in that order
    allowed = where[np.sort(first)[:max_shards]]
    return cand[np.isin(where, allowed)][:k].astype(np.int64)


def relabel_rows(table: dict, *, threshold: float = 0.0) -> np.ndarray:
    """Rows of the flagged samples whose corrected label's probability is at least
    ``threshold``, most confident first (ties: lower index first)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"the relabel threshold is a probability in [0, 1], got {threshold}")
    rows = np.flatnonzero(flagged(table) & (table["prob"] >= threshold))
    return rows[np.lexsort((table["index"][rows], -table["prob"][rows]))]
