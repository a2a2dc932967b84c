"""What a run leaves behind (the names: :mod:`pipeline.rundir`): ``metrics.json`` at every
epoch's end, TensorBoard events, and at the run's end the corrected-label Parquet and the
model — all behind one object, :class:`RunOutputs`, which also calls the run's
:class:`OutputExtra` outputs (the review page's, passed in by :mod:`pipeline.worker`)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mslc import dist
from mslc.estimate import crossfit_targets, heldout_posterior
from mslc.metrics import calibrate, calibration_bin, clean_split_calibration, confusion_matrix, label_posterior
from pipeline.charts import confusion_png
from pipeline.rundir import RunDir
from pipeline.storage import atomic_path, atomic_torch_save, atomic_write_bytes, atomic_write_text
from pipeline.training.methods import registry as methods
from pipeline.training.methods.state import Data, TrainState
from pipeline.training.run import crossfit
from pipeline.training.run.epoch import EpochProgress
from pipeline.training.run.evaluate import predict, progress_line, table_label_metrics
from pipeline.training.settings.config import Config
from pipeline.training.settings.methods import export_mode

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


def label_window(history: list[dict]) -> list[int]:
    """The epochs whose labels a run exports, chosen without the test set or any true label:
    of the epochs after the warm-up (all, if none is after it), those whose clean-validation
    accuracy is within one standard error (``√(p(1−p)/n)``, ``n`` the record's
    ``val_samples``) of the best: the epochs validation cannot tell apart. Without a
    validation split, the last epoch alone."""
    pool = [h for h in history if h.get("phase") != "warmup"] or history
    vals = [_val(h) for h in pool]
    best = max(vals)
    if best < 0:
        return [pool[-1]["epoch"]]
    n = pool[vals.index(best)].get("val_samples") or 0
    se = math.sqrt(best * (1.0 - best) / n) if n else 0.0
    return [h["epoch"] for h, v in zip(pool, vals) if v >= best - se]


def labels_epoch(history: list[dict]) -> int:
    """The latest epoch of :func:`label_window` (labels keep gathering corrections while the
    model improves): ``run.export=latest`` exports its soft labels alone."""
    return label_window(history)[-1]


def keep_labels(labels: dict | None, table: dict, epoch: int, window: list[int], *, mode: str) -> dict | None:
    """The labels a run keeps to export after ``epoch`` (``labels``: those kept so far, the
    form of ``TrainState.labels``; ``table``: this epoch's bank table, numpy arrays;
    ``window``: :func:`label_window` of the history up to it). With ``mode='window'`` ỹ of
    every window epoch is kept (an epoch that left the window is dropped), with ``'latest'``
    only this epoch's; ``y_hat``, ``alpha`` and ``beta`` are the latest window epoch's."""
    if epoch not in window:
        return labels
    kept = {} if labels is None or mode == "latest" else {e: t for e, t in label_tables(labels).items() if e in window}
    kept[epoch] = torch.from_numpy(table["y_tilde"].copy())
    return {
        "epoch": epoch,
        "tables": kept,
        **{k: torch.from_numpy(table[k].copy()) for k in ("y_hat", "alpha", "beta")},
    }


def label_tables(labels: dict) -> dict[int, torch.Tensor]:
    """epoch → (N, C) ỹ of the kept labels (a checkpoint from before the window kept one: its epoch's)."""
    return labels.get("tables") or {int(labels["epoch"]): labels["y_tilde"]}


def exported_labels(labels: dict) -> dict:
    """The table a run exports from its kept labels (:func:`keep_labels`): ``y_tilde`` (N, C)
    the mean of the kept epochs' soft labels (with ``run.export=window`` a temporal ensemble of
    the epochs validation cannot tell apart; else the latest epoch's alone), ``epochs`` those
    epochs, ``epoch`` the latest, and that epoch's ``y_hat``, ``alpha``, ``beta``; numpy arrays."""
    tables = label_tables(labels)
    epochs = sorted(tables)
    mean = sum(tables[e].double() for e in epochs) / len(epochs)
    out = {k: labels[k].numpy() if torch.is_tensor(labels[k]) else labels[k] for k in ("y_hat", "alpha", "beta")}
    return {"epoch": int(labels["epoch"]), "epochs": epochs, "y_tilde": mean.float().numpy(), **out}


def selected_by(epochs: list[int]) -> str:
    """Which labels a run exports and how they were chosen, in a line (``epochs``: the exported
    table's, the latest last); the console, ``metrics.json`` and ``pipeline/train.py`` say it so."""
    how = "within one standard error of the best clean-validation accuracy after the warm-up"
    if len(epochs) > 1:
        return f"the mean soft labels of epochs {', '.join(map(str, epochs))}, those {how}"
    return f"the labels of epoch {epochs[-1]}, the latest {how}"


def flag_counts(corrected: np.ndarray, given: np.ndarray, prev: np.ndarray | None) -> dict:
    """Truth-free per-epoch figures: ``flags`` (corrected ≠ given) and ``churn`` (corrected
    labels that changed since the previous epoch; None for the first epoch a run saw).
    ``corrected``, ``given``, ``prev`` : (N,) int64."""
    return {"flags": int((corrected != given).sum()), "churn": None if prev is None else int((corrected != prev).sum())}


LABEL_KEYS = ("corrected_all", "corrected_clean", "corrected_noisy", "detect_precision", "detect_recall", "detect_f1")


def summarize(history: list[dict], exported: dict | None = None) -> dict:
    """Model selection on clean validation (never the test set), the mean of the last 5
    epochs, and which epoch's labels are exported.

    ``best`` is the test accuracy at the epoch with the highest validation accuracy
    (the earliest such epoch on ties); ``last5`` the mean test accuracy of the last
    ``min(5, epochs)`` epochs; ``labels`` the exported labels' epoch (:func:`labels_epoch`)
    and their label metrics where true labels are known: ``exported`` (written at the run's
    end: the exported table's epochs, how chosen and its own metrics) where given, else those
    of the epoch's table.
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
        "labels": exported
        or {
            "epoch": chosen["epoch"],
            "epochs": [chosen["epoch"]],
            "selected_by": selected_by([chosen["epoch"]]),
            **{k: chosen[k] for k in LABEL_KEYS if k in chosen},
        },
        "final": history[-1],
    }


def write_json_atomic(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(_clean(obj), indent=1))


def write_metrics(run_dir: Path, history: list[dict], extra: dict) -> Path:
    """``metrics.json``: ``extra``, the summary (with ``extra['exported']`` once the run
    exported its labels) and every epoch's record."""
    path = RunDir(run_dir).metrics
    write_json_atomic(path, {**extra, "summary": summarize(history, extra.get("exported")), "epochs": history})
    return path


def label_columns(
    given: np.ndarray,
    soft: np.ndarray,
    y_hat: np.ndarray | None,
    transition: np.ndarray | None,
    calibration: list[dict] | None = None,
    posterior: np.ndarray | None = None,
    cautious: dict | None = None,
) -> dict[str, np.ndarray]:
    """The per-sample figures a practitioner acts on, all without true labels.

    given : (N,) int64; soft : (N, C) ỹ, rows sum to 1; y_hat : (N, C) the model's
    predictions at the same epoch (None: ỹ stands in); transition : (C, C) the noise
    transition estimated on the trusted meta set, or None.

    Returns (N,) arrays: ``corrected`` (arg-max ỹ) and ``corrected_prob``; ``given_prob``
    (ỹ's probability of the given label: the label-quality score, low = likely wrong);
    ``flagged``; ``est_correct`` (the estimated probability that the corrected label is the
    true class: the model's prediction times the transition's likelihood of the given label,
    :func:`mslc.metrics.label_posterior`; ỹ's own probability where the run has no
    transition estimate; moved by ``calibration``'s per-bin bias where given:
    :func:`mslc.metrics.clean_split_calibration`); ``calibration_bin`` (the calibration bin its
    uncalibrated estimate falls in, -1 without calibration: the budget's lower bound counts
    each bin's sampling error by it); ``posterior`` (N, C), where given, is the probability of
    each true class the estimate reads instead of the model's (held-out predictions:
    :func:`mslc.estimate.heldout_posterior`); ``est_cautious``: ``est_correct`` read from
    ``cautious`` (``{'posterior', 'calibration'}``, :func:`heldout_estimate`) instead, where
    given (else ``est_correct`` itself);
    ``predicted`` / ``predicted_prob`` (the model); ``review_rank`` (1 = review first: flagged
    samples before the rest, each by ``given_prob`` ascending).
    """
    n = len(given)
    rows = np.arange(n)
    corrected = soft.argmax(1)
    pred = soft if y_hat is None else y_hat
    if posterior is not None:
        post = posterior
    elif transition is not None:
        post = label_posterior(pred, given, transition)
    else:
        post = soft
    given_prob = soft[rows, given]
    flagged = corrected != given
    order = np.lexsort((rows, given_prob, ~flagged))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(1, n + 1)
    est = post[rows, corrected]
    where = np.full(n, -1, dtype=np.int64)
    if calibration is not None:
        where = calibration_bin(est, calibration)
        est = calibrate(est, calibration)
    est_cautious = est
    if cautious is not None:
        est_cautious = calibrate(cautious["posterior"][rows, corrected], cautious["calibration"])
    return {
        "corrected": corrected,
        "corrected_prob": soft[rows, corrected],
        "given_prob": given_prob,
        "flagged": flagged,
        "est_correct": est,
        "est_cautious": est_cautious,
        "calibration_bin": where,
        "predicted": pred.argmax(1),
        "predicted_prob": pred.max(1),
        "review_rank": rank,
    }


def estimated_by(transition: bool, calibrated: bool, heldout_folds: int = 0) -> str:
    """What ``est_correct`` was computed from, in words (the table's ``est_correct_by``)."""
    if not transition:
        return "soft label"
    what = (
        f"held-out transition posterior ({heldout_folds} cross-fitted models)"
        if heldout_folds
        else "transition posterior"
    )
    return f"{what}, calibrated on the clean validation split" if calibrated else what


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
    epochs: list[int] | None = None,
    y_hat: np.ndarray | None = None,
    transition: np.ndarray | None = None,
    classes: list[str] | None = None,
    soft_rows: bool = False,
    calibration: list[dict] | None = None,
    posterior: np.ndarray | None = None,
    heldout_folds: int = 0,
    cautious: dict | None = None,
) -> Path:
    """One row per training sample (the columns are listed in the README's output table):
    index, key; given_label, given_name, given_prob; corrected_label, corrected_name,
    corrected_prob, flagged, est_correct, est_correct_cautious, calibration_bin; predicted_label,
    predicted_prob; review_rank;
    alpha, beta; true_label / is_noisy (null where unknown); ``soft`` (ỹ's full row) with
    ``soft_rows``. See :func:`label_columns`.

    ``soft`` (N, C) rows sum to 1; ``alpha``, ``beta`` (N,) NaN where never computed;
    ``true`` (N,) int with -1 for unknown, or None; ``epoch``: the epoch the labels are
    from (the latest, where ``epochs`` lists the epochs whose mean ỹ is ``soft``), kept in the
    file's metadata (``labels_epoch``, ``labels_epochs``). ``posterior``, ``cautious``: see
    :func:`label_columns`, from ``heldout_folds`` cross-fitted models (named in
    ``est_correct_by``). Written whole or not at all.
    """
    n, c = soft.shape
    names = np.asarray(classes if classes is not None else [str(i) for i in range(c)], dtype=object)
    col = label_columns(given, soft, y_hat, transition, calibration, posterior, cautious)
    known = None if true is None else true >= 0
    cols = {
        "index": pa.array(np.arange(n, dtype=np.int64)),
        "key": pa.array([str(k) for k in keys]),
        "given_label": pa.array(given.astype(np.int64)),
        "given_name": pa.array(names[given].tolist()),
        "given_prob": pa.array(col["given_prob"].astype(np.float32)),
        "corrected_label": pa.array(col["corrected"].astype(np.int64)),
        "corrected_name": pa.array(names[col["corrected"]].tolist()),
        "corrected_prob": pa.array(col["corrected_prob"].astype(np.float32)),
        "flagged": pa.array(col["flagged"]),
        "est_correct": pa.array(col["est_correct"].astype(np.float32)),
        "est_correct_cautious": pa.array(col["est_cautious"].astype(np.float32)),
        "calibration_bin": pa.array(col["calibration_bin"].astype(np.int8)),
        "predicted_label": pa.array(col["predicted"].astype(np.int64)),
        "predicted_prob": pa.array(col["predicted_prob"].astype(np.float32)),
        "review_rank": pa.array(col["review_rank"]),
        "alpha": pa.array(alpha.astype(np.float32), mask=np.isnan(alpha)),
        "beta": pa.array(beta.astype(np.float32), mask=np.isnan(beta)),
        "true_label": pa.array(np.where(known, true, 0).astype(np.int64), mask=~known)
        if true is not None
        else pa.nulls(n, pa.int64()),
        "is_noisy": pa.array(given != true, mask=~known) if true is not None else pa.nulls(n, pa.bool_()),
    }
    if soft_rows:
        cols["soft"] = pa.FixedSizeListArray.from_arrays(pa.array(soft.astype(np.float32).ravel()), c)
    table = pa.table(cols)
    meta = {
        b"classes": json.dumps(list(map(str, names))).encode(),
        b"est_correct_by": estimated_by(transition is not None, calibration is not None, heldout_folds).encode(),
    }
    if calibration is not None:
        meta[b"est_correct_calibration"] = json.dumps(calibration).encode()
    if epoch is not None:
        meta[b"labels_epoch"] = str(epoch).encode()
    if epochs is not None:
        meta[b"labels_epochs"] = json.dumps([int(e) for e in epochs]).encode()
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
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

        self.writer = SummaryWriter(str(RunDir(run_dir).tensorboard))
        self.classes = classes

    def epoch(
        self, record: dict, *, alpha: np.ndarray, beta: np.ndarray, is_noisy: np.ndarray, known: np.ndarray
    ) -> None:
        """Scalars of ``record``; α and β histograms, α split by originally clean / noisy (N,) bool masks."""
        e = record["epoch"]
        for k, v in record.items():
            if isinstance(v, (int, float)) and k != "epoch" and v is not None and not math.isnan(v):
                self.writer.add_scalar(
                    k.replace("_", "/", 1) if k.startswith(("corrected_", "alpha_", "detect_")) else k, v, e
                )
        for pair, v in (record.get("alpha_pairs") or {}).items():
            for group in ("flipped", "clean"):  # "5->1" is not a legal tag name: "5_to_1"
                if not math.isnan(v[group]):
                    self.writer.add_scalar(f"alpha_pair/{pair.replace('->', '_to_')}/{group}", v[group], e)
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


class OutputExtra(Protocol):
    """More of a run's outputs, beside the training runtime's own (the review page's:
    :class:`pipeline.review.outputs.ReviewOutputs`). Only rank 0 calls them."""

    def epoch_image(self, shard_dir: str, manifest: dict, given: np.ndarray, soft: np.ndarray) -> np.ndarray | None:
        """An (H, W, 3) uint8 image for TensorBoard's ``suspected_errors`` at an epoch's end
        (``given`` (N,) int64, ``soft`` (N, C) ỹ), or None."""

    def finish(self, run_dir: RunDir, shard_dir: str, log) -> dict:
        """At the run's end, after the labels, metrics and model are written: write its
        files; returns what goes into the run's result (name → path or figures)."""


class RunOutputs:
    """Everything a run writes at an epoch's end (:meth:`epoch`) and at its end
    (:meth:`finish`), in ``run.storage_path/run.name``; rank 0 writes, the other ranks only
    take part in the collectives. ``extras``: more outputs (:class:`OutputExtra`)."""

    def __init__(self, cfg: Config, data: Data, *, lead: bool, log=print, extras: tuple[OutputExtra, ...] = ()) -> None:
        self.cfg, self.data, self.lead, self.log, self.extras = cfg, data, lead, log, tuple(extras)
        self.run_dir = RunDir.of(cfg.run.storage_path, cfg.run.name)
        self.run_dir.path.mkdir(parents=True, exist_ok=True)
        self.tb = TensorBoardLog(self.run_dir.path, data.manifest["classes"]) if lead and cfg.run.tensorboard else None
        self.extra = {
            "config": cfg.to_dict(),
            "shard_dir": str(data.shard_dir),
            "noise": {k: data.manifest["noise"][k] for k in ("kind", "rate", "realized_rate")},
        }

    def start(self, st: TrainState) -> None:
        """Before the first epoch a run trains (not after a resume): the given labels against the true ones."""
        known = self.data.known
        if self.tb and known.any() and st.epoch == 0:
            self.tb.confusion("given_vs_true", self.data.true[known], self.data.labels[known], 0)

    def progress(self, epoch: int) -> EpochProgress | None:
        """Rank 0's progress lines inside ``epoch`` (None elsewhere)."""
        return EpochProgress(self.cfg, epoch, self.log, self.tb) if self.lead else None

    def epoch(self, st: TrainState, record: dict, table: dict) -> None:
        """At an epoch's end (``record`` already in ``st.history``; ``table`` the bank's
        ``y_tilde``, ``y_hat``, ``alpha``, ``beta``): keep the labels if this epoch is the one
        to export so far, the progress line, ``metrics.json``, TensorBoard."""
        if not self.lead:
            return
        epoch, data = record["epoch"], self.data
        st.labels = keep_labels(st.labels, table, epoch, label_window(st.history), mode=export_mode(self.cfg))
        self.log(progress_line(self.cfg, record))
        write_metrics(self.run_dir.path, st.history, self.extra)
        if self.tb is None:
            return
        known = data.known
        self.tb.epoch(record, alpha=table["alpha"], beta=table["beta"], is_noisy=data.is_noisy, known=known)
        if known.any():
            self.tb.confusion("corrected_vs_true", data.true[known], table["y_tilde"][known].argmax(1), epoch)
        for extra in self.extras:
            grid = extra.epoch_image(str(data.shard_dir), data.manifest, data.labels, table["y_tilde"])
            if grid is not None:
                self.tb.image("suspected_errors", grid, epoch)

    def finish(self, st: TrainState, device: torch.device) -> dict:
        """At the run's end (collective): the exported labels, ``metrics.json``, the model,
        then the extras' files. Returns the run's result (paths by name, the summary)."""
        result = {"run_dir": str(self.run_dir), "summary": summarize(st.history)}
        if dist.all_min(0 if self.lead and st.labels is None else 1) == 0:  # a checkpoint from before labels were kept
            st.labels = {"epoch": st.epoch, **{k: torch.from_numpy(v) for k, v in st.bank.table().items()}}
        if not self.lead:
            return result
        cfg, data, rd = self.cfg, self.data, self.run_dir
        t = exported_labels(st.labels)
        self.log(f"exported labels: {selected_by(t['epochs'])}")
        transition = methods.transition_estimate(st)
        est = flag_estimate(cfg, st, data, device, t, transition, log=self.log)
        if est["heldout"] is not None:
            result["heldout_predictions"] = str(write_heldout(rd.heldout, est["heldout"], data.labels, transition))
        result["corrected_labels"] = str(
            write_corrected_labels(
                rd.labels,
                keys=data.keys,
                given=data.labels,
                soft=t["y_tilde"],
                alpha=t["alpha"],
                beta=t["beta"],
                true=data.true,
                epoch=t["epoch"],
                epochs=t["epochs"],
                y_hat=t.get("y_hat"),
                transition=est["transition"],
                classes=data.manifest["classes"],
                soft_rows=cfg.run.export_soft,
                calibration=est["calibration"],
                posterior=est["posterior"],
                heldout_folds=est["folds"],
                cautious=est["cautious"],
            )
        )
        self.extra["exported"] = {
            "epoch": t["epoch"],
            "epochs": t["epochs"],
            "selected_by": selected_by(t["epochs"]),
            **table_label_metrics(t["y_tilde"], data),
        }
        result["summary"] = summarize(st.history, self.extra["exported"])
        result["metrics"] = str(write_metrics(rd.path, st.history, self.extra))
        atomic_torch_save(st.model.state_dict(), rd.model)
        result["model"] = str(rd.model)
        for extra in self.extras:
            result.update(extra.finish(rd, str(data.shard_dir), self.log))
        if self.tb:
            self.tb.close()
            result["tensorboard"] = str(rd.tensorboard)
        return result


def flag_estimate(cfg: Config, st: TrainState, data: Data, device: torch.device, t: dict, transition, *, log) -> dict:
    """What each flag's ``est_correct`` is read from: ``{'transition', 'calibration',
    'posterior', 'cautious', 'folds', 'heldout'}``. With ``run.crossfit_folds`` (and a
    transition estimate and ``run.calibrate``): held-out predictions (``heldout``,
    :mod:`pipeline.training.run.crossfit`) through :func:`heldout_estimate`; rows the cross-fit
    never streamed keep the run model's posterior. Otherwise the run's own model's predictions
    (``posterior``, ``cautious``, ``heldout`` None) and :func:`val_calibration`."""
    plain = {"transition": transition, "posterior": None, "cautious": None, "folds": 0, "heldout": None}
    if not (cfg.run.crossfit_folds and transition is not None and cfg.run.calibrate):
        return {**plain, "calibration": val_calibration(cfg, st, data, device, transition)}
    ho = crossfit.heldout_predictions(cfg, data, crossfit_targets(t["y_tilde"], transition), device, log=log)
    if ho is None:
        return {**plain, "calibration": None}
    own = t["y_hat"] if t.get("y_hat") is not None else t["y_tilde"]
    est = heldout_estimate(ho, data.labels, transition, seed=cfg.run.seed, own=np.asarray(own))
    return {**est, "folds": ho.folds, "heldout": ho}


def heldout_estimate(
    ho: crossfit.Heldout, given: np.ndarray, transition: np.ndarray, *, seed: int, own: np.ndarray | None = None
) -> dict:
    """Each training sample's posterior of its true class from the cross-fit's held-out
    predictions (:func:`mslc.estimate.heldout_posterior`, the transition refitted to them):
    ``posterior`` (N, C), ``transition``, ``calibration`` (what ``est_correct`` reads), and
    ``cautious``, the same with the recalibration fitted out of sample (``{'posterior',
    'calibration'}``; None where the noise is a few flips and nothing is recalibrated), which
    the review budget's bound reads too. Rows the cross-fit never streamed (NaN) take ``own``
    (N, C), the run model's predictions, under the refitted transition.

    given : (N,) int64; transition : (C, C) the meta set's estimate; seed : ``run.seed``."""
    seen = ~np.isnan(ho.train).any(1)
    if not seen.all() and own is None:
        raise ValueError(f"{int((~seen).sum())} samples have no held-out prediction and no own prediction stands in")
    out: dict = {"cautious": None}
    for cautious in (False, True):
        r = heldout_posterior(
            ho.train[seen], ho.clean, ho.clean_labels, given[seen], transition, folds=ho.folds,
            out_of_sample=cautious, seed=seed,
        )  # fmt: skip
        if cautious and not r["recalibrated"]:
            break
        post = np.empty((len(seen), r["posterior"].shape[1]))
        post[seen] = r["posterior"]
        if not seen.all():
            post[~seen] = label_posterior(own[~seen], given[~seen], r["transition"])
        if cautious:
            out["cautious"] = {"posterior": post, "calibration": r["calibration"]}
        else:
            out.update(posterior=post, transition=r["transition"], calibration=r["calibration"])
    return out


def write_heldout(path: Path, ho: crossfit.Heldout, given: np.ndarray, transition: np.ndarray) -> Path:
    """The cross-fit's out-of-sample predictions (``heldout_predictions.npz``, written whole or not
    at all): ``train`` (N, C) float32 each training sample's class probabilities by the model that
    did not train on it, row = sample index (NaN rows: never streamed); ``given`` (N,) int64 its
    given label; ``clean`` (K·n, C) float32 the K models' predictions on the clean validation
    split, one block per model, and ``clean_labels`` (K·n,) int64; ``folds`` K; ``transition``
    (C, C) the noise estimated on the trusted meta set that :func:`mslc.estimate.heldout_posterior`
    started from. What confident-learning tools take as out-of-sample ``pred_probs``."""
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        train=ho.train.astype(np.float32),
        given=np.asarray(given, dtype=np.int64),
        clean=ho.clean.astype(np.float32),
        clean_labels=np.asarray(ho.clean_labels, dtype=np.int64),
        folds=np.int64(ho.folds),
        transition=np.asarray(transition, dtype=np.float64),
    )
    atomic_write_bytes(path, buf.getvalue())
    return path


def val_calibration(cfg: Config, st: TrainState, data: Data, device: torch.device, transition) -> list[dict] | None:
    """How the flags' estimated precision compares with the truth on the clean validation split
    (:func:`mslc.metrics.clean_split_calibration`), or None without a transition estimate, a
    validation split or ``run.calibrate``."""
    if transition is None or not cfg.run.calibrate:
        return None
    pv = predict(st.model, data, "val", device, cfg_bad_samples=cfg.data.bad_samples)
    return None if pv is None else clean_split_calibration(pv[0], pv[1], transition)
