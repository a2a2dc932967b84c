"""Helpers the tests share (not tests themselves): a small run's config and a second
computation of the review page's numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipeline.training.settings.cli import absolutize, load_config

RECOMMENDED = (
    "mslc.corrector=class",
    "mslc.virtual_lr=initial",
    "mslc.trusted_passes=10",
    "mslc.transition=estimated",
    "mslc.alpha_prior=prediction",
)  # the user-facing presets' MSLC (presets.recommended_meta)


def smoke_cfg(data_cfg, storage, name, epochs, extra=()):
    return absolutize(
        load_config(
            "smoke",
            [
                *extra,
                f"data.shard_root={data_cfg.shard_root}",
                f"data.n_meta={data_cfg.n_meta}",
                f"data.n_val={data_cfg.n_val}",
                "data.max_train=0",
                "data.max_test=0",
                f"optim.epochs={epochs}",
                "meta.warmup_epochs=1",
                "optim.milestones=[3]",
                f"run.storage_path={storage}",
                f"run.name={name}",
                "run.tensorboard=false",
                "run.report=false",
            ],
        )
    )


def parquet_numbers(path: Path, c: int) -> dict:
    """The page's headline numbers, straight from the Parquet table (a second computation)."""
    t = pq.read_table(path).to_pydict()
    g, k, y = t["given_label"], t["corrected_label"], t["true_label"]
    flagged = [a != b for a, b in zip(g, k)]
    out = {"samples": len(g), "flagged": sum(flagged), "flagged_share": sum(flagged) / len(g)}
    if "est_correct" in t:
        out["est_flag_precision"] = float(np.mean([e for e, f in zip(t["est_correct"], flagged) if f]))
    for cls in range(c):
        mine = [f for f, a in zip(flagged, g) if a == cls]
        out[f"class{cls}_given"], out[f"class{cls}_flagged"] = len(mine), sum(mine)
    kn = [i for i, v in enumerate(y) if v is not None]
    if kn:
        noisy = [i for i in kn if g[i] != y[i]]
        tp = sum(flagged[i] for i in noisy)
        out.update(
            known=len(kn),
            detect_precision=tp / sum(flagged[i] for i in kn),
            detect_recall=tp / len(noisy),
            label_acc_corrected=sum(k[i] == y[i] for i in kn) / len(kn),
            true_noise_rate=len(noisy) / len(kn),
        )
    return out


def check_sweep_table(sweep_dir: Path, *, trials: int) -> None:
    """A finished sweep's ``best_configs.csv`` / ``.md`` under ``sweep_dir``: ``trials`` rows,
    ranked by clean validation accuracy, each agreeing with its own run's per-epoch metrics
    (best validation epoch, the test accuracy there, the swept values)."""
    import csv
    import json
    import os

    import pytest

    from pipeline.rundir import RunDir

    rows = list(csv.DictReader((sweep_dir / "best_configs.csv").read_text().splitlines()))
    assert len(rows) == trials
    assert (sweep_dir / "best_configs.md").read_text().startswith("Sweep ranked by val_acc")
    vals = [float(r["best_val_acc"]) for r in rows]
    assert vals == sorted(vals, reverse=True)
    for r in rows:
        m = json.loads(RunDir(r["run_dir"]).metrics.read_text())
        best = max(m["epochs"], key=lambda e: e["val_acc"])
        assert float(r["best_val_acc"]) == pytest.approx(best["val_acc"])
        assert float(r["test_acc_at_best_val"]) == pytest.approx(best["test_acc"])
        assert m["config"]["mslc"]["alpha_lr"] == pytest.approx(float(r["alpha_lr"]))
        assert m["config"]["meta"]["warmup_epochs"] == int(r["warmup_epochs"])
        assert os.listdir(RunDir(r["run_dir"]).tensorboard)
