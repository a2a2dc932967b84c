"""CE vs MSLC on Fashion-MNIST with 40% symmetric and 40% asymmetric noise.

    python benchmarks/fmnist.py [--seeds 0 1] [--presets fmnist-sym40 fmnist-asym40] [key=value ...]

Each row runs the preset's full schedule in one process (the same loop Ray Train
runs, without Ray's start-up), once with ``meta.method=ce`` (same schedule, no
correction) and once with MSLC. Prints a table and writes
``benchmarks/results/fmnist.md`` and ``.json``.

Columns: ``best`` is the test accuracy at the epoch chosen on the clean validation
split; ``last5`` the mean test accuracy of the last 5 epochs. ``label clean`` /
``label noisy`` is the accuracy of the label each method hands back, on samples
whose given label was right / wrong: argmax ỹ of the labels the run exports (the
epoch ``labels epoch``, chosen on clean validation) for MSLC, and for CE, which
corrects nothing, the given label itself (so 100 / 0).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch
from common import label_epochs, publish  # benchmarks/common.py, beside this script

from pipeline.prep.job import ensure_shards
from pipeline.training.methods.registry import METHODS
from pipeline.training.run.checkpoint import LocalReporter
from pipeline.training.settings.cli import absolutize, load_config
from pipeline.worker import run

RESULTS = ROOT / "benchmarks" / "results"
COLUMNS = (
    "method",
    "noise",
    "realized_rate",
    "seed",
    "best",
    "last5",
    "label_all",
    "label_clean",
    "label_noisy",
    "labels_epoch",
    "labels_epochs",
    "wall_s",
)


# These tables measure training and its labels: the held-out estimate of the flags' precision
# (run.crossfit_folds, on by default) changes no label and would add its cross-fit to every wall
# time; benchmarks/review_budget.py measures it.
NO_CROSSFIT = ["run.crossfit_folds=0"]


def one_row(preset: str, method: str, seed: int, overrides: list[str], storage: Path, device: torch.device) -> dict:
    name = f"bench-{preset}-{method}-s{seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = absolutize(
        load_config(
            preset,
            [
                f"meta.method={method}",
                f"run.seed={seed}",
                f"run.name={name}",
                f"run.storage_path={storage}",
                "run.tensorboard=false",
                *overrides,
            ],
        )
    )
    ensure_shards(cfg.data)
    t0 = time.time()
    res = run(
        cfg,
        LocalReporter(Path(cfg.run.storage_path) / name, keep=cfg.run.keep_checkpoints),
        device,
        log=lambda s: print(f"  {s}", flush=True),
    )
    wall = time.time() - t0
    s, final, labels = res["summary"], res["summary"]["final"], res["summary"]["labels"]
    metrics = json.loads(Path(res["metrics"]).read_text())
    return {
        "method": METHODS[method].label,
        "noise": f"{cfg.data.noise}-{round(100 * cfg.data.noise_rate)}",
        "realized_rate": metrics["noise"]["realized_rate"],
        "seed": seed,
        "best": s["best_test_acc"],
        "last5": s["last5_test_acc"],
        "label_all": labels["corrected_all"],  # the exported labels (summary.labels), not the last epoch's
        "label_clean": labels["corrected_clean"],
        "label_noisy": labels["corrected_noisy"],
        "labels_epoch": labels["epoch"],
        "labels_epochs": labels["epochs"],
        "last_epoch_label_all": final["corrected_all"],
        "wall_s": wall,
        "selected_epoch": s["selected_epoch"],
        "epochs": cfg.optim.epochs,
        "warmup_epochs": cfg.meta.warmup_epochs,
        "train_samples": final["samples"],
        "run_dir": res["run_dir"],
    }


def markdown(rows: list[dict], header: str) -> str:
    out = [
        header,
        "",
        "Label acc all / clean / noisy: accuracy of the label each method hands back (MSLC: argmax ỹ "
        "of the exported labels, the mean soft labels of the epochs in the labels-from-epochs column; CE "
        "corrects nothing, so its label is the given one: 100 / 0) on samples whose given label was right / "
        "wrong. Wall seconds: the whole run, evaluation included.",
        "",
        "| method | noise | realized rate | seed | best | last5 | label acc all | label acc clean | label acc noisy "
        "| labels from epochs | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['method']} | {r['noise']} | {100 * r['realized_rate']:.2f}% | {r['seed']} | "
            f"{100 * r['best']:.2f} | {100 * r['last5']:.2f} | {100 * r['label_all']:.2f} | "
            f"{100 * r['label_clean']:.2f} | "
            f"{100 * r['label_noisy']:.2f} | {', '.join(map(str, label_epochs(r)))} | {r['wall_s']:.0f} |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["fmnist-sym40", "fmnist-asym40"])
    p.add_argument("--methods", nargs="+", default=["ce", "mslc"], choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--storage", default=str(ROOT / "runs" / "benchmarks"))
    p.add_argument("--out", default=str(RESULTS / "fmnist"), help="output path without extension")
    p.add_argument("--device", default="cpu", help="cpu, cuda, or auto (cuda where present)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    a = p.parse_args(argv)
    device = torch.device(
        "cuda" if a.device == "auto" and torch.cuda.is_available() else "cpu" if a.device == "auto" else a.device
    )
    rows = []
    for preset in a.presets:
        for seed in a.seeds:
            for method in a.methods:
                print(f"{preset} {method} seed {seed}", flush=True)
                rows.append(
                    one_row(preset, method, seed, [*NO_CROSSFIT, *a.overrides], Path(a.storage).resolve(), device)
                )
    header = (
        f"# Fashion-MNIST: CE vs MSLC\n\nCommand: `python benchmarks/fmnist.py {' '.join(argv or sys.argv[1:])}`"
        f"  \nMachine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"{torch.cuda.get_device_name(0) if device.type == 'cuda' else 'CPU'}; "
        f"torch {torch.__version__}. Test accuracy in %; best = at the epoch chosen on clean validation."
    )
    publish(a.out, markdown(rows, header), {"columns": COLUMNS, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
