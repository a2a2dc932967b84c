"""MSLC and the baselines on four kinds of label noise, with seeds: the labels each hands back.

    python benchmarks/noise_table.py [--seeds 0 1 2] [--full] [--device cpu|cuda] [--quick] [key=value ...]

Methods: CE (no correction), GLC, MW-Net (its paper's settings), and MSLC three ways: the
paper's loss-only corrector at the paper's settings (θ's Adam weight decay 1e-4, the
virtual step's lr decaying with the classifier's), the same corrector with the two fixes
of issue 11 (no weight decay on θ, the virtual step at the initial lr throughout), and
the class-aware corrector (``meta.corrector=class``) with those fixes. Every run starts
from ``common.PAPER_SETTINGS``, each row adds its own (``METHODS``) and the schedule is
pinned (``SCHEDULE``), so the table does not move when a preset's defaults do. Noise:
Fashion-MNIST at 40% symmetric, asymmetric (``mslc.noise.FMNIST_ASYM``), pair-flip and
instance-dependent (Xia et al. 2020) noise.

Default (the 2-core CPU budget, about two hours for three seeds): each run trains on a
seeded 10,000-image subset of the training split (meta 1,000, clean validation 1,000,
test 2,000), with the default preset's schedule pinned (14 epochs, 4 of CE warm-up,
lr 0.05 ×0.1 at epochs 10 and 12). ``--full`` trains on every image (GPU machines);
``--quick`` is a smoke test of this script. ``key=value`` overrides apply to every run
(after the budget, before each method's own).

Per run: ``val`` is the best clean-validation accuracy of any epoch (what defaults are
chosen on); ``best`` is the test accuracy at the epoch with the best clean-validation
accuracy, ``last5`` the mean test accuracy of the last 5 epochs; ``label_*`` the
accuracy of the exported labels (arg-max ỹ, from the epoch the run chose without test
or true labels; CE's are the given labels) on all / originally clean / originally noisy
samples; ``precision`` / ``recall`` / ``f1`` of "exported label ≠ given label" as a
detector of wrong labels; ``label_peak`` the best corrected-label accuracy of any epoch
after the warm-up (how much the exported epoch gives away). Writes
``benchmarks/results/noise_table.md`` and ``.json`` (one row per method, noise and seed;
fractions in [0, 1]).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np
import torch

from common import PAPER_SETTINGS, publish  # benchmarks/common.py, beside this script
from pipeline.prep.job import ensure_shards
from pipeline.training.checkpoint import LocalReporter
from pipeline.training.cli import absolutize, load_config
from pipeline.training.loop import run

RESULTS = ROOT / "benchmarks" / "results"
NOISES = [("sym", 0.4), ("asym", 0.4), ("pairflip", 0.4), ("instance", 0.4)]
FIXES = ["meta.weight_decay=0", "meta.virtual_lr=initial"]  # what the diagnosis of issue 11 changes
METHODS = {  # each row's settings beyond common.PAPER_SETTINGS, which every run starts from
    "CE": ["meta.method=ce"],
    "GLC": ["meta.method=glc"],
    "MW-Net": ["meta.method=mwnet"],
    "MSLC (paper settings)": ["meta.method=mslc"],
    "MSLC (paper corrector + fixes)": ["meta.method=mslc", *FIXES],
    "MSLC (class-aware + fixes)": ["meta.method=mslc", "meta.corrector=class", *FIXES],
}
SCHEDULE = ["optim.epochs=14", "meta.warmup_epochs=4", "optim.milestones=[10,12]", "meta.warmup_avg=10"]
BUDGET = ["data.max_train=10000", "data.max_test=2000", *SCHEDULE]
FULL: list[str] = [*SCHEDULE]
QUICK = ["data.max_train=600", "data.max_test=300", "data.n_meta=100", "data.n_val=100", "optim.epochs=4",
         "meta.warmup_epochs=1", "optim.milestones=[3]"]
COLUMNS = ("method", "noise", "seed", "best", "last5", "label_all", "label_clean", "label_noisy", "precision",
           "recall", "f1", "wall_s")
SHOWN = ("val", "best", "last5", "label_all", "label_clean", "label_noisy", "precision", "recall", "f1")


def one_run(method: str, noise: str, rate: float, overrides: list[str], seed: int, storage: Path,
            device: torch.device) -> dict:
    tag = method.replace(" ", "_").replace("(", "").replace(")", "")
    name = f"noise-{noise}{int(100 * rate)}-{tag}-s{seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = absolutize(load_config("fmnist-sym40", [
        *PAPER_SETTINGS, f"data.noise={noise}", f"data.noise_rate={rate}", f"run.seed={seed}", f"run.name={name}",
        f"run.storage_path={storage}", "run.tensorboard=false", "run.keep_checkpoints=1", *overrides]))
    ensure_shards(cfg.data, log=lambda s: None)
    t0 = time.time()
    res = run(cfg, LocalReporter(Path(cfg.run.storage_path) / name, keep=1), device, log=lambda s: None)
    wall = time.time() - t0
    m = json.loads(Path(res["metrics"]).read_text())
    s, lab = res["summary"], res["summary"]["labels"]
    after = [h for h in m["epochs"] if h["phase"] != "warmup"] or m["epochs"]
    return {"method": method, "noise": f"{noise}-{int(100 * rate)}", "seed": seed,
            "val": max((h["val_acc"] for h in m["epochs"] if h.get("val_acc") is not None), default=None),
            "best": s["best_test_acc"], "last5": s["last5_test_acc"],
            "label_all": lab.get("corrected_all"), "label_clean": lab.get("corrected_clean"),
            "label_noisy": lab.get("corrected_noisy"), "precision": lab.get("detect_precision"),
            "recall": lab.get("detect_recall"), "f1": lab.get("detect_f1"), "wall_s": wall,
            "labels_epoch": lab["epoch"], "label_peak": max(h.get("corrected_all") or 0.0 for h in after),
            "selected_epoch": s["selected_epoch"], "realized_rate": m["noise"]["realized_rate"],
            "history": [{k: h.get(k) for k in ("epoch", "phase", "val_acc", "test_acc", "corrected_all",
                                                "corrected_noisy", "alpha_clean", "alpha_noisy")}
                        for h in m["epochs"]]}


def cells(rows: list[dict], method: str, noise: str, key: str) -> list[float]:
    return [r[key] for r in rows if r["method"] == method and r["noise"] == noise and r[key] is not None
            and not np.isnan(r[key])]


def mean_std(vals: list[float]) -> str:
    if not vals:
        return "–"
    if len(vals) == 1:  # one seed: no spread to show
        return f"{100 * vals[0]:.2f}"
    return f"{100 * np.mean(vals):.2f} ± {100 * np.std(vals, ddof=1):.2f}"


def mean_ranks(rows: list[dict], methods: list[str], noises: list[str], keys=("last5", "label_all")) -> dict:
    """Mean rank (1 = best) of each method over every (noise, key) pair, by the seeds' mean."""
    got = {m: [] for m in methods}
    for n in noises:
        for k in keys:
            means = {m: np.mean(cells(rows, m, n, k)) if cells(rows, m, n, k) else -1.0 for m in methods}
            for i, m in enumerate(sorted(methods, key=lambda m: -means[m])):
                got[m].append(i + 1)
    return {m: float(np.mean(v)) for m, v in got.items()}


def markdown(rows: list[dict], methods: list[str], noises: list[str], header: list[str]) -> str:
    out = [*header, ""]
    for n in noises:
        out += [f"### {n}", "", "| method | " + " | ".join(SHOWN) + " | labels from epoch | label peak | wall s |",
                "|---|" + "---|" * (len(SHOWN) + 3)]
        for m in methods:
            ep = sorted({r["labels_epoch"] for r in rows if r["method"] == m and r["noise"] == n})
            wall = cells(rows, m, n, "wall_s")
            out.append(f"| {m} | " + " | ".join(mean_std(cells(rows, m, n, k)) for k in SHOWN)
                       + f" | {', '.join(map(str, ep))} | {mean_std(cells(rows, m, n, 'label_peak'))} | "
                       f"{np.mean(wall) if wall else float('nan'):.0f} |")
        out.append("")
    rk = mean_ranks(rows, methods, noises)
    out += ["### Mean rank over the noise kinds by test last5 and exported-label accuracy (1 = best)", "",
            "| method | mean rank |", "|---|---|", *[f"| {m} | {rk[m]:.2f} |" for m in sorted(methods, key=rk.get)], ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--full", action="store_true", help="every training image (GPU machines)")
    ap.add_argument("--quick", action="store_true", help="a tiny smoke test of this script")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--noises", nargs="+", default=[f"{k}-{int(100 * r)}" for k, r in NOISES])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--storage", default="", help="where runs go (default: a new directory under runs/)")
    ap.add_argument("--out", default=str(RESULTS / "noise_table"), help="output path without extension")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    a = ap.parse_args(argv)
    budget = [*(FULL if a.full else QUICK if a.quick else BUDGET), *a.overrides]
    noises = [(k, r) for k, r in NOISES if f"{k}-{int(100 * r)}" in a.noises]
    storage = Path(a.storage or ROOT / "runs" / f"noise-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    device, rows, t0 = torch.device(a.device), [], time.time()
    for seed in a.seeds:
        for noise, rate in noises:
            for method in a.methods:
                r = one_run(method, noise, rate, [*budget, *METHODS[method]], seed, storage, device)
                rows.append(r)
                print(f"{r['noise']:>12} {method:<24} seed {seed}: best {100 * r['best']:.2f} last5 "
                      f"{100 * r['last5']:.2f} labels {100 * (r['label_all'] or 0):.2f} (noisy "
                      f"{100 * (r['label_noisy'] or 0):.2f}, F1 {100 * (r['f1'] or 0):.2f}) "
                      f"[{r['wall_s']:.0f}s; {time.time() - t0:.0f}s in all]", flush=True)
    names = [f"{k}-{int(100 * r)}" for k, r in noises]
    protocol = "full protocol" if a.full else "quick smoke test" if a.quick else "CPU budget"
    header = [f"# Label noise on Fashion-MNIST: MSLC and the baselines ({protocol})", "",
              f"`python benchmarks/noise_table.py {' '.join(sys.argv[1:] if argv is None else argv)}` — seeds "
              f"{a.seeds}, device {a.device}, torch {torch.__version__}, {time.time() - t0:.0f} s in all. "
              f"Overrides of every run: `{' '.join(budget) or '(none)'}`.", "",
              "Mean ± std over the seeds, in %. val: the best clean-validation accuracy (what defaults are "
              "chosen on); best: test accuracy at the best clean-validation epoch; last5: "
              "mean test accuracy of the last 5 epochs; label all / clean / noisy: accuracy of the exported labels "
              "on all / originally clean / originally noisy samples (CE: the given labels); precision / recall / "
              "f1: exported label ≠ given label as a detector of wrong labels; label peak: the best corrected-label "
              "accuracy of any epoch after the warm-up."]
    publish(a.out, markdown(rows, a.methods, names, header),
            {"columns": COLUMNS, "rows": rows, "seeds": a.seeds, "overrides": budget, "device": a.device,
             "mean_rank": mean_ranks(rows, a.methods, names)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
