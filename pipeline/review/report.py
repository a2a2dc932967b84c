"""A run's review: ``RUN_DIR/report/`` (``index.html``, its PNGs, ``numbers.json``),
``RUN_DIR/relabel.csv``, and the TensorBoard grid of the top suspected errors.

Everything is computed from what the run left behind: ``corrected_labels.parquet`` (the
numbers and the chosen samples), ``metrics.json`` (the curves; the shard directory) and
the training shards (the chosen samples' images, from only the shards that hold them).
A new report replaces an old one only once it is complete.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np

from mslc.metrics import confusion_matrix
from pipeline import charts, shardset
from pipeline.errors import PipelineError
from pipeline.review import images, page
from pipeline.review.select import (
    RELABEL_PRECISION,
    budget,
    doubtful_clean,
    noise_matrix,
    read_table,
    relabel_lower,
    relabel_rows,
    review_numbers,
    suspected_errors,
    top_suspects,
)
from pipeline.rundir import BUDGET, LABELS, MATRIX, METRICS, RELABEL, REPORT_DIR, REPORT_NUMBERS, REPORT_PAGE
from pipeline.shardset.spec import PrepareOptions
from pipeline.storage import atomic_path, atomic_write_text, disk_full_error, disk_full_in

GRID_SHARDS = 4  # the TensorBoard grid reads at most this many training shards per epoch


def run_shard_dir(run_dir: Path, metrics: dict) -> str:
    """The shard directory a run trained on, as its ``metrics.json`` records it."""
    if metrics.get("shard_dir"):
        return metrics["shard_dir"]
    try:  # a metrics.json without shard_dir: the config's data keys name the directory
        data = metrics["config"]["data"]
        return PrepareOptions(
            **{f.name: data[f.name] for f in dataclasses.fields(PrepareOptions) if f.name in data}
        ).shard_dir()
    except Exception as e:
        raise PipelineError(
            f"{run_dir / METRICS}: cannot tell which shards the run used ({e}); pass --shards DIR"
        ) from None


def same_data(path: Path, table: dict, shard_dir: str, manifest: dict) -> None:
    """The run's table and the shards must be the same data set: each sample's key and given
    label as the shards' label table has them (the same row count is not enough)."""
    shards = shardset.read_labels_table(shard_dir, manifest)
    keys = np.asarray([str(k) for k in shards["key"]], dtype=object)
    for name, mine, theirs in (
        ("key", table["key"].astype(str), keys.astype(str)),
        ("given label", table["given"], shards["label"]),
    ):
        bad = np.flatnonzero(mine != theirs)
        if bad.size:
            i = int(bad[0])
            raise PipelineError(
                f"{path}: sample {i} has {name} {mine[i]!r}, the shards at {shard_dir} "
                f"{theirs[i]!r} ({bad.size} of {len(mine)} differ): the run used other shards; "
                "pass the run's own with --shards DIR"
            )


def load_run(run_dir: str | Path, shard_dir: str | None = None) -> dict:
    """``{run_dir, metrics, table, manifest, shard_dir, classes}`` of a finished run."""
    run_dir = Path(run_dir)
    for name in (METRICS, LABELS):
        if not (run_dir / name).is_file():
            raise PipelineError(f"{run_dir / name}: not found (not a finished run directory?)")
    try:
        metrics = json.loads((run_dir / METRICS).read_text())
    except json.JSONDecodeError as e:
        raise PipelineError(f"{run_dir / METRICS}: not valid JSON ({e})") from None
    shard_dir = shard_dir or run_shard_dir(run_dir, metrics)
    manifest = shardset.load_manifest(shard_dir)
    table = read_table(run_dir / LABELS)
    n, c = manifest["splits"]["train"]["count"], manifest["num_classes"]
    if len(table["index"]) != n or not np.array_equal(table["index"], np.arange(n)):
        raise PipelineError(
            f"{run_dir / LABELS}: {len(table['index'])} rows, but the shards at "
            f"{shard_dir} hold {n} training samples (other shards? pass --shards DIR)"
        )
    same_data(run_dir / LABELS, table, shard_dir, manifest)
    for name in ("given", "corrected", "true"):
        bad = np.flatnonzero((table[name] < (-1 if name == "true" else 0)) | (table[name] >= c))
        if bad.size:
            raise PipelineError(
                f"{run_dir / LABELS}: sample {int(bad[0])}: {name} label "
                f"{int(table[name][bad[0]])} is outside 0..{c - 1}"
            )
    return {
        "run_dir": run_dir,
        "metrics": metrics,
        "table": table,
        "manifest": manifest,
        "shard_dir": str(shard_dir),
        "classes": list(manifest["classes"]),
    }


def write_estimates(run: dict, *, target: float = RELABEL_PRECISION, threshold: float | None = None) -> dict:
    """``RUN_DIR/review_budget.json`` and ``RUN_DIR/noise_matrix.json`` from the run's table
    (nothing there needs a true label); returns the budget, whose ``relabel_threshold`` is
    ``threshold`` or, when None, the one chosen for ``target``."""
    b = budget(run["table"], target=target)
    b["samples"] = int(len(run["table"]["given"]))
    b["relabel_threshold"] = b["threshold"] if threshold is None else threshold
    sel = relabel_rows(run["table"], threshold=b["relabel_threshold"])
    b["relabel_rows"] = int(len(sel))
    b["relabel_precision"] = float(run["table"]["est_correct"][sel].mean()) if len(sel) else None
    b["relabel_lower"] = relabel_lower(run["table"], b["relabel_threshold"], b["relabel_precision"])
    rows = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()} for r in b["rows"]]
    atomic_write_text(run["run_dir"] / BUDGET, json.dumps({**b, "rows": rows}, indent=1))
    atomic_write_text(run["run_dir"] / MATRIX, json.dumps(noise_matrix(run["table"], run["classes"]), indent=1))
    run["budget"] = b  # the page uses the same budget
    return b


def write_relabel(run: dict, *, threshold: float = 0.0, path: str | Path | None = None) -> Path:
    """``path`` (default ``RUN_DIR/relabel.csv``): the flagged samples with corrected-label probability at least
    ``threshold``, most confident first, in the ``--labels`` format ``prepare.py`` reads
    (``key``, ``label``: the corrected class id), with ``confidence`` (that probability),
    ``given_label``, the two class names and ``alpha`` for whoever reviews it."""
    t, classes = run["table"], run["classes"]
    path = Path(path) if path is not None else run["run_dir"] / RELABEL
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "label", "confidence", "given_label", "label_name", "given_name", "alpha"])
        for r in relabel_rows(t, threshold=threshold):
            a = t["alpha"][r]
            w.writerow(
                [
                    t["key"][r],
                    int(t["corrected"][r]),
                    f"{t['prob'][r]:.6f}",
                    int(t["given"][r]),
                    classes[t["corrected"][r]],
                    classes[t["given"][r]],
                    "" if np.isnan(a) else f"{a:.6f}",
                ]
            )
    return path


def _groups(values: np.ndarray, table: dict) -> dict[str, np.ndarray]:
    known = table["true"] >= 0
    if not known.any():
        return {"all samples": values}
    right = known & (table["given"] == table["true"])
    out = {"given label right": values[right], "given label wrong": values[known & ~right]}
    if not known.all():
        out["truth unknown"] = values[~known]
    return out


def build_charts(run: dict, numbers: dict, review_budget: dict) -> list[tuple[str, str, bytes]]:
    """``(file, alt text, png)`` of each picture (``review_budget``: :func:`~pipeline.review.select.budget`'s)."""
    t, classes = run["table"], run["classes"]
    c = len(classes)
    flips = confusion_matrix(t["given"], t["corrected"], c)
    out = [
        (
            "confusion.png",
            "given → corrected labels",
            charts.confusion_png(
                flips,
                classes,
                title="given → corrected (row-normalized; counts)",
                xlabel="corrected label",
                ylabel="given label",
                counts=True,
            ),
        )
    ]
    rates = {"estimated (flagged share)": [k["est_noise_rate"] for k in numbers["classes"]]}
    if numbers["known"]:
        rates["true (known samples)"] = [k["true_noise_rate"] for k in numbers["classes"]]
    out.append(
        (
            "noise_rates.png",
            "noise rate per given class",
            charts.rates_png(classes, rates, title="noise rate per given class"),
        )
    )
    for name, sym in (("alpha", "α"), ("beta", "β")):
        out.append(
            (
                f"{name}.png",
                f"{sym} distribution",
                charts.histogram_png(_groups(t[name], t), title=f"{sym} per sample", xlabel=sym),
            )
        )
    out.append(("budget.png", "review budget: estimated precision per threshold", charts.budget_png(review_budget)))
    history = run["metrics"].get("epochs") or []
    if history:
        out.append(("curves.png", "accuracy over epochs", charts.curves_png(history, labels_epochs=t["labels_epochs"])))
    return out


def entry(table: dict, row: int, thumbs: dict, errors: dict) -> dict:
    i = int(table["index"][row])
    e = {
        "index": i,
        "key": table["key"][row],
        "given": int(table["given"][row]),
        "corrected": int(table["corrected"][row]),
        "prob": float(table["prob"][row]),
        "alpha": float(table["alpha"][row]),
        "true": int(table["true"][row]),
        "est_correct": float(table["est_correct"][row]),
    }
    if i in thumbs:
        e["image"] = f"img/{i:08d}.png"
    else:
        e["error"] = errors.get(i, "image not found")
    return e


def labels_from(epochs: list) -> str:
    if len(epochs) > 1:
        return f"Labels: the mean soft labels of epochs {', '.join(map(str, epochs))}"
    return f"Labels from epoch {epochs[0] if epochs else None}"


def info_lines(run: dict) -> dict:
    m, t = run["metrics"], run["table"]
    cfg, noise = m.get("config", {}), m.get("noise", {})
    name = cfg.get("run", {}).get("name") or run["run_dir"].name
    lines = [
        f"Run {name}: method {cfg.get('meta', {}).get('method', '?')}, preset {cfg.get('preset', '?')}, "
        f"data set {run['manifest'].get('dataset', '?')} ({len(run['classes'])} classes), "
        f"noise {noise.get('kind', '?')} {noise.get('rate', '')}.",
        f"{labels_from(t.get('labels_epochs') or [t['labels_epoch']])} (the exported labels); shards: {run['shard_dir']}.",
        "Flagged: the corrected label (argmax ỹ) differs from the given one. p: the corrected label's "
        "probability in ỹ; α: the weight the corrector gives the given label.",
    ]
    return {"title": f"Label review: {name}", "lines": lines, "estimated_by": t["est_correct_by"]}


def write_report(run: dict, *, top: int = 16, log=print) -> Path:
    """Write ``RUN_DIR/report/`` of a run (:func:`load_run`; see the module's docstring);
    returns its ``index.html``.

    ``top``: the samples shown per class in each gallery. Built in a temporary directory
    beside it and swapped in when complete: an old report stays whole until then.
    """
    if top < 1:
        raise ValueError(f"the report shows at least 1 sample per class, got top={top}")
    t, c = run["table"], len(run["classes"])
    b = run.get("budget") or budget(t)  # the one write_estimates wrote, where it ran
    numbers = review_numbers(t, c, computed_budget=b)
    rows = {k: (suspected_errors(t, k, top), doubtful_clean(t, k, top)) for k in range(c)}
    chosen = np.concatenate([np.concatenate(v) for v in rows.values()]).astype(np.int64)
    thumbs, errors = images.read_thumbnails(run["shard_dir"], run["manifest"], t["index"][chosen])
    out = run["run_dir"] / REPORT_DIR
    tmp = out.with_name(f".{REPORT_DIR}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "img").mkdir(parents=True)
        for i, im in thumbs.items():
            im.save(tmp / "img" / f"{i:08d}.png")
        figures = build_charts(run, numbers, b)
        for name, _, png in figures:
            (tmp / name).write_bytes(png)
        galleries = [
            {
                "class": k,
                "errors": [entry(t, r, thumbs, errors) for r in e],
                "doubtful": [entry(t, r, thumbs, errors) for r in d],
            }
            for k, (e, d) in rows.items()
        ]
        html = page.render(info_lines(run), numbers, run["classes"], [(f, a) for f, a, _ in figures], galleries)
        (tmp / REPORT_PAGE).write_text(html, encoding="utf-8")
        (tmp / REPORT_NUMBERS).write_text(json.dumps(numbers, indent=1, default=float))
        swap_in(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if disk_full_in(e):
            raise disk_full_error(out) from None
        raise
    for i, why in sorted(errors.items()):
        log(f"report: sample {i}: {why}")
    return out / REPORT_PAGE


def swap_in(new: Path, out: Path) -> None:
    """Replace the directory ``out`` by ``new`` (renames; the old one is removed last)."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(new, out)
    shutil.rmtree(old, ignore_errors=True)


def suspects_grid(
    shard_dir: str, manifest: dict, given: np.ndarray, soft: np.ndarray, *, k: int = 32, max_shards: int = GRID_SHARDS
) -> np.ndarray | None:
    """The ``k`` most confident suspected errors of a soft-label table (``given (N,)``,
    ``soft (N, C)``) found in at most ``max_shards`` training shards, as a captioned
    ``(H, W, 3)`` uint8 grid (captions: given>corrected class ids and the probability);
    None when nothing is flagged."""
    where = images.shard_of(np.arange(len(given)), manifest)
    chosen = top_suspects(given, soft, k, shard_of=where, max_shards=max_shards)
    if not chosen.size:
        return None
    thumbs, _ = images.read_thumbnails(shard_dir, manifest, chosen)
    corrected = soft.argmax(1)
    tiles = [thumbs[int(i)] if int(i) in thumbs else images.placeholder() for i in chosen]
    caps = [f"{given[i]}>{corrected[i]} {soft[i, corrected[i]]:.2f}" for i in chosen]
    return images.captioned_grid(tiles, caps)
