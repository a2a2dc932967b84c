"""Samples/s of the streaming loader (JPEG decode + Clothing1M training augmentation at
224×224) with 1 and 2 loader workers, against the rate a training step consumes.

    python benchmarks/streaming.py [--images 1200] [--workers 1 2] [--device cpu|cuda]
                                   [--steps-only] [--out benchmarks/results/streaming]

1. Writes ``--images`` synthetic JPEGs of Clothing1M-like sizes (sides 300–500 px,
   smooth colour fields with noise, ~quality 90) as an image-folder tree, and shards
   them with ``pipeline/prepare.py``'s code path (original JPEG bytes stored).
2. Streams the training split as training does (shard order and shuffle buffer seeded,
   decode, ``v2`` resize 256 / random crop 224 / flip, batches of 32) with each loader
   worker count; the first batch is not timed.
3. Times training steps of the clothing1m preset's model (ResNet-50, ImageNet stem,
   14 classes, batch 32 at 224×224 on the device; CPU: batch 8): a CE step and an
   exact MSLC step (meta batch of the same size), each after one untimed step.

The table gives each rate and the loader workers one training worker needs to keep
up (consumption ÷ per-loader-worker rate). Writes ``--out``.md and .json.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np
import torch
from common import publish  # benchmarks/common.py, beside this script

RESULTS = ROOT / "benchmarks" / "results"


def synthetic_images(n: int, seed: int = 0):
    """``n`` Clothing-sized images (H, W, 3) uint8, sides 300–500 px: smooth colour fields with noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(300, 501, 2))
        base = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(base).resize((w, h), Image.BILINEAR), dtype=np.int16)
        yield np.clip(img + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)


def synthetic_tree(root: Path, n: int, seed: int = 0) -> None:
    """``n`` JPEGs (:func:`synthetic_images`, quality 90) over 14 class folders."""
    from PIL import Image

    for i, img in enumerate(synthetic_images(n, seed)):
        d = root / f"class{i % 14:02d}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i:06d}.jpg", quality=90)


def build_shards(work: Path, n: int) -> tuple[str, dict, float]:
    from pipeline import shardset
    from pipeline.prep.job import prepare
    from pipeline.shardset.spec import PrepareOptions

    tree = work / "tree"
    if not tree.exists():
        synthetic_tree(tree, n)
    data = PrepareOptions(
        dataset="folder",
        raw_dir=str(tree),
        noise="none",
        noise_rate=0.0,
        n_meta=14,
        n_val=14,
        shard_size=200,
        prepare_workers=min(2, os.cpu_count() or 1),
    )
    out = prepare(data, work / "shards", log=lambda s: None)
    m = shardset.load_manifest(out)
    sizes = [p.stat().st_size for p in tree.rglob("*.jpg")]
    return str(out), m, float(np.mean(sizes))


def loader_rate(shard_dir: str, m: dict, workers: int, batch: int = 32) -> dict:
    from pipeline.shardset import expected_counts, shard_urls
    from pipeline.training.data import streaming, transforms

    tf = transforms.build_transform("imagenet", train=True, image_size=224, stored_size=None)
    ds = streaming.stream(
        shard_urls(shard_dir, m, "train"),
        num_classes=m["num_classes"],
        shuffle_seed=0,
        shuffle_buffer=500,
        expected=expected_counts(shard_dir, m, "train"),
        channels=3,
        transform=tf,
    )
    it = iter(streaming.loader(ds, batch_size=batch, workers=workers))
    first = next(it)
    assert first[0].shape[1:] == (3, 224, 224)
    t0, n = time.perf_counter(), 0
    for x, _, _ in it:
        n += len(x)
    dt = time.perf_counter() - t0
    return {"what": f"loader, {workers} worker(s)", "samples": n, "seconds": dt, "samples_per_s": n / dt}


def step_rates(device: torch.device, batch: int, steps: int) -> list[dict]:
    from mslc.corrector import Corrector
    from mslc.meta_step import ce_step, mslc_step
    from mslc.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet50", num_classes=14, in_channels=3, stem="imagenet").to(device)
    corrector = Corrector(100, "soft").to(device)
    opt_w = torch.optim.SGD(model.parameters(), lr=8e-4, momentum=0.9, weight_decay=1e-3)
    opt_t = torch.optim.Adam(corrector.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, 224, 224, device=device)
    y = torch.randint(0, 14, (batch,), device=device)
    prev = torch.softmax(torch.randn(batch, 14, device=device), 1)
    xm, ym = torch.randn_like(x), torch.randint(0, 14, (batch,), device=device)

    def ce():
        ce_step(model, x, y, opt_w=opt_w)

    def mslc():
        mslc_step(model, corrector, x, y, prev, xm, ym, opt_w=opt_w, opt_theta=opt_t, lr_virtual=8e-4)

    out = []
    for name, fn in (("CE step (ResNet-50)", ce), ("MSLC step (ResNet-50, exact)", mslc)):
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        out.append(
            {
                "what": f"{name}, batch {batch}, {device.type}",
                "samples": steps * batch,
                "seconds": dt,
                "samples_per_s": steps * batch / dt,
            }
        )
    return out


def table(rows: list[dict], per_worker: float | None) -> str:
    lines = [
        "| what | samples | seconds | samples/s | loader workers needed per training worker |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        need = ""
        if per_worker and r["what"].startswith(("CE", "MSLC")):
            need = str(max(1, math.ceil(r["samples_per_s"] / per_worker)))
        lines.append(f"| {r['what']} | {r['samples']} | {r['seconds']:.1f} | {r['samples_per_s']:.1f} | {need} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=1200)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=0, help="training batch (default: 32 on cuda, 8 on cpu)")
    ap.add_argument("--steps-only", action="store_true", help="time the training steps only")
    ap.add_argument("--work", default="", help="directory for the synthetic images and shards (default: temp)")
    ap.add_argument("--out", default=str(RESULTS / "streaming"))
    a = ap.parse_args()
    device = torch.device(a.device)
    batch = a.batch or (32 if device.type == "cuda" else 8)
    rows, info = [], {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    per_worker = None
    if not a.steps_only:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(a.work or tmp)
            t0 = time.perf_counter()
            shard_dir, m, mean_bytes = build_shards(work, a.images)
            info.update(
                images=m["splits"]["train"]["count"],
                mean_jpeg_bytes=mean_bytes,
                prepare_seconds=time.perf_counter() - t0,
            )
            for w in a.workers:
                rows.append(loader_rate(shard_dir, m, w))
        per_worker = min(r["samples_per_s"] / max(1, w) for r, w in zip(rows, a.workers))
        info["per_loader_worker_samples_per_s"] = per_worker
    rows += step_rates(device, batch, a.steps)
    md = (
        f"# Streaming loader vs training step\n\n`python benchmarks/streaming.py {' '.join(sys.argv[1:])}`"
        f"\n\n{table(rows, per_worker)}\n" + "".join(f"- {k}: {v}\n" for k, v in info.items())
    )
    publish(a.out, md, {"rows": rows, "info": info})
    return 0


if __name__ == "__main__":
    sys.exit(main())
