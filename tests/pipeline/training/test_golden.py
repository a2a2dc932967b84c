"""Golden-values regression: the ``smoke`` preset on CPU with a fixed seed must give the
per-epoch numbers committed in ``tests/assets/golden/smoke.json``.

It is what tells a refactor that it changed the numbers. The run goes in a child process
whose kernels do not depend on the CPU (:data:`PINNED`: ATen's portable kernels instead of
the AVX2/AVX-512 ones, MKL's reproducible mode, no oneDNN), so that it is nearly the same on
any x86 machine with the same thread count: with the machine's own fastest kernels a 3-epoch
run moved by 18 of 500 test samples between two CPUs. The tolerances below absorb what
is left of another platform's float summation order:

* losses (train, meta): relative 1e-3 (even with the portable kernels, the epoch-3 losses moved
  by 3e-4 relative between the CPU that wrote the file and an AMD EPYC, every accuracy
  the same to the sample);
* accuracies: within 2 samples of the split they are measured on (validation: 100
  samples, i.e. 0.02; corrected-label accuracy: the 1,500 training samples or their
  clean / noisy part, i.e. 2 / count).

Regenerate the file only for a change that is meant to change the numbers, and say so
in the commit: ``MSLC_UPDATE_GOLDEN=1 python -m pytest tests/pipeline/training/test_golden.py``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from tests.conftest import ROOT

GOLDEN = ROOT / "tests" / "assets" / "golden" / "smoke.json"
PINNED = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}  # set before torch loads; oneDNN off in the child
OVERRIDES = ["run.seed=0", "scale.threads=2", "run.tensorboard=false", "run.report=false"]
LOSSES = ("train_loss", "meta_loss")
ACCURACIES = ("val_acc", "test_acc", "corrected_all", "corrected_clean", "corrected_noisy")
REL_LOSS = 1e-3
SAMPLES = 2


def smoke_epochs(tmp: Path) -> tuple[list[dict], dict]:
    """The smoke preset's per-epoch records and the sample counts the accuracies are over."""
    from pipeline.prep.fashion_mnist import fmnist_files
    from pipeline.prep.job import ensure_shards
    from pipeline.training.run.checkpoint import LocalReporter
    from pipeline.training.settings.cli import absolutize, load_config
    from pipeline.worker import run

    if fmnist_files(ROOT / "data" / "raw") is None:
        pytest.fail("Fashion-MNIST is missing: run `make data` (the Makefile's test target does)")
    cfg = absolutize(
        load_config(
            "smoke",
            [
                f"data.raw_dir={ROOT / 'data' / 'raw'}",
                f"data.shard_root={tmp / 'shards'}",
                f"run.storage_path={tmp / 'runs'}",
                "run.name=golden",
                *OVERRIDES,
            ],
        )
    )
    ensure_shards(cfg.data, log=lambda s: None)
    res = run(cfg, LocalReporter(tmp / "runs" / "golden"), log=lambda s: None)
    manifest = json.loads((Path(cfg.data.shard_dir()) / "manifest.json").read_text())
    n_train = manifest["splits"]["train"]["count"]
    n_noisy = round(manifest["noise"]["realized_rate"] * n_train)
    counts = {
        "val_acc": manifest["splits"]["val"]["count"],
        "test_acc": manifest["splits"]["test"]["count"],
        "corrected_all": n_train,
        "corrected_clean": n_train - n_noisy,
        "corrected_noisy": n_noisy,
    }
    epochs = json.loads(Path(res["metrics"]).read_text())["epochs"]
    keep = ("epoch", "phase", *LOSSES, *ACCURACIES)
    return [{k: e[k] for k in keep} for e in epochs], counts


def close(key: str, got, want, counts: dict) -> bool:
    if want is None or got is None:  # NaN is stored as null (the warm-up epoch has no meta loss)
        return want is None and got is None
    if key in LOSSES:
        return math.isclose(got, want, rel_tol=REL_LOSS)
    return abs(got - want) <= SAMPLES / counts[key] + 1e-12


def pinned_smoke_epochs(tmp: Path) -> tuple[list[dict], dict]:
    """:func:`smoke_epochs` in a child process with the CPU-independent kernels."""
    import subprocess
    import sys

    out = tmp / "epochs.json"
    env = {**os.environ, **PINNED, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.pipeline.training.test_golden", str(tmp), str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    return got["epochs"], got["counts"]


def test_smoke_run_matches_the_golden_values(tmp_path):
    epochs, counts = pinned_smoke_epochs(tmp_path)
    if os.environ.get("MSLC_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(
            json.dumps({"preset": "smoke", "overrides": OVERRIDES, "counts": counts, "epochs": epochs}, indent=1) + "\n"
        )
        pytest.skip(f"wrote {GOLDEN}")
    golden = json.loads(GOLDEN.read_text())
    assert golden["counts"] == counts
    assert [e["epoch"] for e in epochs] == [e["epoch"] for e in golden["epochs"]]
    diffs = [
        f"epoch {g['epoch']} {k}: got {e[k]!r}, golden {g[k]!r}"
        for e, g in zip(epochs, golden["epochs"])
        for k in g
        if k != "epoch" and (e[k] != g[k] if k == "phase" else not close(k, e[k], g[k], counts))
    ]
    assert not diffs, "the smoke run's numbers moved:\n" + "\n".join(diffs)


if __name__ == "__main__":  # the child of pinned_smoke_epochs: python -m tests.pipeline.training.test_golden TMP OUT
    import sys

    import torch

    torch.backends.mkldnn.enabled = False
    epochs, counts = smoke_epochs(Path(sys.argv[1]))
    Path(sys.argv[2]).write_text(json.dumps({"epochs": epochs, "counts": counts}))
