"""Training images/s end to end (shards → loader → decode → step) for CE and MSLC, each
precision and decode path, against the model-only ceiling; loader-bound or compute-bound.

    python benchmarks/throughput.py [--device cpu|cuda] [--steps 30] [--images 1500]

The ``folder`` preset (the ``clothing1m`` preset's model, schedule and ImageNet
transform on an image-folder data set; ``model.pretrained=false``: no downloads) on
synthetic JPEGs of Clothing1M-like sizes (sides 300–500 px, ~quality 90; see
``benchmarks/streaming.py``), sharded by ``pipeline/prepare.py``'s code path. On a GPU:
ResNet-50 at 224×224, batch 32, 8 loader processes. On CPU (no GPU here): the small
CNN at 64×64, batch 32, 1 loader process, so the loader has a model it can feed.

Per row, after 2 untimed steps, ``--steps`` timed ones:

* ``end to end``: the worker loop's own pieces (``loop.train_batches`` with its loader,
  ``data.decode``, ``normalize``, the method's ``step`` and bank write);
* ``compute only``: the same steps on one batch already on the device; for CE this is
  the model-only ceiling of that precision;
* ``loader only``: the training stream without steps (decoding on the device included
  for ``decode=gpu``);
* ``bound``: loader-bound when the loader alone is slower than the compute alone.

MSLC variants: ``exact`` (forward-mode θ-gradient), ``lagged`` (``mslc.lagged=true``)
and ``cheapest`` (``mslc.meta_scope=last mslc.meta_every=5``). Writes
``benchmarks/results/throughput.md`` and ``.json`` (``throughput_gpu`` on a GPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch
from common import publish  # benchmarks/common.py, beside this script
from streaming import synthetic_tree

RESULTS = ROOT / "benchmarks" / "results"
METHODS = {  # row name: overrides
    "CE": ["meta.method=ce"],
    "MSLC exact": ["meta.method=mslc", "mslc.grad_impl=jvp"],
    "MSLC lagged": ["meta.method=mslc", "mslc.grad_impl=jvp", "mslc.lagged=true"],
    "MSLC cheapest": ["meta.method=mslc", "mslc.meta_scope=last", "mslc.meta_every=5"],
}


def base_config(tree: Path, shards: Path, device: torch.device, a) -> list[str]:
    gpu = device.type == "cuda"
    return [
        f"data.raw_dir={tree}",
        f"data.shard_root={shards}",
        "data.n_meta=64",
        "data.n_val=14",
        "data.shard_size=200",
        "data.noise=none",
        "data.noise_rate=0.0",
        "data.verify=none",
        f"data.image_size={224 if gpu else 64}",
        f"data.loader_workers={a.loader_workers or (8 if gpu else 1)}",
        "data.shuffle_buffer=200",
        f"model.arch={a.arch or ('resnet50' if gpu else 'small-cnn')}",
        "model.pretrained=false",
        f"optim.batch_size={a.batch}",
        "meta.meta_batch_size=32",
        f"scale.use_gpu={'true' if gpu else 'false'}",
        "run.tensorboard=false",
        "run.name=throughput",
        f"run.storage_path={shards.parent / 'runs'}",
    ]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(cfg, device: torch.device, steps: int, what: str) -> float:
    """Images/s of ``what`` (end to end | compute only | loader only) for the config."""
    from pipeline.training.methods import registry as methods
    from pipeline.training.methods.state import build_data, build_state
    from pipeline.training.run import epoch as epoch_mod

    data = build_data(cfg, device)
    st = build_state(cfg, data, device)
    st.method = method = methods.build_method(cfg, device)
    phase = method.name
    method.start_epoch(st, data, phase)
    plan = epoch_mod.build_plan(cfg, data, 1)
    stream = epoch_mod.train_batches(cfg, data, 1, plan, min(plan.steps, steps + 2), device=device)

    def step(x, y, idx):
        b = epoch_mod.make_batch(st, data, device, x, y, idx)
        res = method.step(st, data, phase, b)
        method.write_bank(st.bank, phase, 1, b, res)

    batches = iter(stream)
    if what == "compute only":
        x, y, idx = next(batches)
        batches = iter([(x.to(device), y.to(device), idx)] * (steps + 2))
    for _ in range(2):  # untimed
        b = next(batches)
        if what != "loader only":
            step(*b)
    sync(device)
    t0, n = time.perf_counter(), 0
    for x, y, idx in batches:
        if what != "loader only":
            step(x, y, idx)
        else:
            x.sum()  # the batch is ready (decoded on the device for decode=gpu)
        n += len(y)
        if n >= steps * cfg.optim.batch_size:
            break
    sync(device)
    if n < steps * cfg.optim.batch_size:
        raise SystemExit(
            f"error: {what}: the training split ran out after {n} timed images of the "
            f"{steps * cfg.optim.batch_size} that --steps {steps} needs (and 2 untimed batches "
            f"first); give --images more (the meta and validation sets take "
            f"{cfg.data.n_meta + cfg.data.n_val} of them)"
        )
    return n / (time.perf_counter() - t0)


def finish_rows(rows: list[dict]) -> list[dict]:
    """Each row's share of the model-only ceiling and its time against CE's (CE is measured first)."""
    for r in rows:
        ceiling = next(
            (c["compute_only"] for c in rows if c["method"] == "CE" and c["precision"] == r["precision"]), float("nan")
        )
        r["of_ceiling"] = r["end_to_end"] / ceiling
        ce = next(
            (
                c["end_to_end"]
                for c in rows
                if c["method"] == "CE" and c["precision"] == r["precision"] and c["decode"] == r["decode"]
            ),
            float("nan"),
        )
        r["x_ce_time"] = ce / r["end_to_end"]
    return rows


def run_rows(tree: Path, shards: Path, device: torch.device, a, on_row=lambda rows: None) -> list[dict]:
    from pipeline.prep.job import ensure_shards
    from pipeline.training.settings.cli import load_config

    base = base_config(tree, shards, device, a)
    ensure_shards(load_config("folder", base).data, log=lambda s: None)
    precisions = ["fp32", "bf16"] if device.type == "cpu" or torch.cuda.is_bf16_supported() else ["fp32", "fp16"]
    rows, loader = [], {}
    for decode in ("cpu", "gpu"):
        cfg = load_config("folder", [*base, *METHODS["CE"], f"data.decode={decode}"])
        loader[decode] = measure(cfg, device, a.steps, "loader only")
        print(f"loader only, decode={decode}: {loader[decode]:.0f} img/s", file=sys.stderr, flush=True)
    for name, over in METHODS.items():
        for precision in precisions:
            cfg = load_config("folder", [*base, *over, f"optim.precision={precision}"])
            compute = measure(cfg, device, a.steps, "compute only")
            for decode in ("cpu", "gpu"):
                cfg = load_config("folder", [*base, *over, f"optim.precision={precision}", f"data.decode={decode}"])
                e2e = measure(cfg, device, a.steps, "end to end")
                rows.append(
                    {
                        "method": name,
                        "precision": precision,
                        "decode": decode,
                        "end_to_end": e2e,
                        "compute_only": compute,
                        "loader_only": loader[decode],
                        "bound": "loader" if loader[decode] < compute else "compute",
                    }
                )
                print(
                    f"{name} {precision} decode={decode}: {e2e:.0f} img/s (compute {compute:.0f})",
                    file=sys.stderr,
                    flush=True,
                )
                on_row(finish_rows(rows))  # written at once: a timeout keeps the rows measured
    return finish_rows(rows)


def markdown(rows: list[dict], info: dict, command: str) -> str:
    md = [
        "# Training throughput, end to end",
        "",
        f"`{command}`",
        "",
        "Images/s. Model-only ceiling: CE's compute-only rate at that precision (one batch already on the device). "
        "Bound: loader when the loader alone is slower than the compute alone.",
        "",
        "| method | precision | decode | end to end | of ceiling | × CE time | compute only | loader only | bound |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    md += [
        f"| {r['method']} | {r['precision']} | {r['decode']} | {r['end_to_end']:.0f} | {100 * r['of_ceiling']:.0f}% "
        f"| {r['x_ce_time']:.2f} | {r['compute_only']:.0f} | {r['loader_only']:.0f} | {r['bound']} |"
        for r in rows
    ]
    md += ["", *(f"- {k}: {v}" for k, v in info.items()), ""]
    return "\n".join(md)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--images", type=int, default=1500)
    ap.add_argument("--arch", default="", help="default: resnet50 on cuda, small-cnn on cpu")
    ap.add_argument("--loader-workers", type=int, default=0, help="default: 8 on cuda, 1 on cpu")
    ap.add_argument("--work", default="", help="directory for the synthetic images and shards (default: temp)")
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    info = {
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "steps": a.steps,
        "batch": a.batch,
        "images": a.images,
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    command = f"python benchmarks/throughput.py {' '.join(argv if argv is not None else sys.argv[1:])}".strip()
    out = a.out or str(RESULTS / ("throughput_gpu" if device.type == "cuda" else "throughput"))

    def partial(rows):
        publish(
            out,
            markdown(rows, {**info, "complete": "no: written while it ran"}, command),
            {"rows": rows, "info": info, "complete": False},
            quiet=True,
        )

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.work or tmp)
        tree = work / "tree"
        if not tree.exists():
            synthetic_tree(tree, a.images)
        rows = run_rows(tree, work / "shards", device, a, on_row=partial)
    publish(out, markdown(rows, info, command), {"rows": rows, "info": info, "complete": True})
    return 0


if __name__ == "__main__":
    sys.exit(main())
