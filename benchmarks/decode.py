"""JPEG decoding: the loader's decoder (PIL) and torchvision's (deprecated since 0.29)
against TorchCodec's, on Clothing1M-like JPEGs, images/s on one thread.

    python benchmarks/decode.py [--images 400] [--rounds 7] [--device cpu|cuda]
                                [--out benchmarks/results/decode]

TorchCodec is not a dependency of this project: the script imports it if installed
(``pip install torchcodec``; its wheels bring their own JPEG decoder, no FFmpeg needed for
images) and leaves its rows out otherwise. Each row decodes the same ``--images`` synthetic
JPEGs (sides 300–500 px, quality 90, as ``benchmarks/streaming.py`` writes them) to (3, H, W)
uint8 after one untimed pass that checks its pixels against PIL's, then ``--rounds`` timed
passes, the decoders in turn within each round; the table gives the median rate and the
range. With
``--device cuda`` it adds the batched GPU decodes (nvJPEG): torchvision's ``decode_jpeg(list,
device=...)``, as ``data.decode=gpu`` runs it, and TorchCodec's, the device synchronised
before the clock stops. Writes ``--out``.md and .json.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np
import torch
from common import publish  # benchmarks/common.py, beside this script
from streaming import synthetic_images

RESULTS = ROOT / "benchmarks" / "results"


def synthetic_jpegs(n: int, seed: int = 0) -> list[bytes]:
    """``n`` JPEGs (quality 90) of ``streaming.py``'s synthetic Clothing-sized images."""
    from PIL import Image

    out = []
    for img in synthetic_images(n, seed):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def pil_decode(blob: bytes) -> torch.Tensor:
    """The loader's decode (``pipeline.shardset.samples.decode_image``: PIL, RGB) as (3, H, W)."""
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"))).permute(2, 0, 1)


def decoders(device: str) -> dict:
    """Row name → (decode all blobs: list of uint8 tensors → list of (3, H, W) tensors)."""
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_jpeg as tv_decode

    rows = {
        "PIL (the loader's CPU decode)": lambda ts, bs: [pil_decode(b) for b in bs],
        "torchvision.io.decode_jpeg, cpu": lambda ts, bs: [tv_decode(t, mode=ImageReadMode.RGB) for t in ts],
    }
    try:
        from torchcodec.decoders import decode_jpeg as tc_decode
    except (ImportError, OSError, RuntimeError) as e:  # not installed, or built for another torch
        print(f"torchcodec: not available ({type(e).__name__}: {str(e)[:200]}); its rows are left out", flush=True)
        tc_decode = None
    if tc_decode is not None:
        rows["torchcodec.decoders.decode_jpeg, cpu"] = lambda ts, bs: [tc_decode(t, mode="RGB") for t in ts]
    if device == "cuda":
        rows["torchvision.io.decode_jpeg, cuda, batched"] = lambda ts, bs: tv_decode(
            ts, mode=ImageReadMode.RGB, device="cuda"
        )
        if tc_decode is not None:
            rows["torchcodec.decoders.decode_jpeg, cuda, batched"] = lambda ts, bs: tc_decode(
                ts, mode="RGB", device="cuda"
            )
    return rows


def check_row(fn, tensors, blobs, reference, *, cuda: bool) -> int:
    """One untimed pass (warm-up); returns max |pixel − PIL's| over the images."""
    out = fn(tensors, blobs)
    if cuda:
        torch.cuda.synchronize()
    return max(int((o.cpu().int() - r.int()).abs().max()) for o, r in zip(out, reference))


def time_pass(fn, tensors, blobs, *, cuda: bool) -> float:
    """Seconds for one pass over the images (the device synchronised before the clock stops)."""
    t0 = time.perf_counter()
    fn(tensors, blobs)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def summarise(name: str, n: int, seconds: list[float], diff: int) -> dict:
    rates = sorted(n / s for s in seconds)
    return {
        "decoder": name,
        "images": n,
        "rounds": len(seconds),
        "images_per_s": float(np.median(rates)),
        "min": rates[0],
        "max": rates[-1],
        "max_diff": diff,
    }


def run_info(a, blobs: list[bytes]) -> dict:
    import torchvision

    try:
        import torchcodec

        tc_version = torchcodec.__version__
    except (ImportError, OSError, RuntimeError):
        tc_version = "not available"
    return {
        "images": a.images,
        "rounds": a.rounds,
        "mean_jpeg_bytes": float(np.mean([len(b) for b in blobs])),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torchcodec": tc_version,
        "device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu",
        "threads": 1,
    }


def table(rows: list[dict], info: dict, device: str) -> str:
    base = rows[0]["images_per_s"]
    md = f"# JPEG decode, images/s\n\n`python benchmarks/decode.py{' --device cuda' if device == 'cuda' else ''}`\n\n"
    md += "| decoder | images/s (median) | range over rounds | × PIL | max abs pixel diff vs PIL |\n|---|---|---|---|---|\n"
    md += "".join(
        f"| {r['decoder']} | {r['images_per_s']:.0f} | {r['min']:.0f}–{r['max']:.0f} | "
        f"{r['images_per_s'] / base:.2f} | {r['max_diff']} |\n"
        for r in rows
    )
    return md + "\n" + "".join(f"- {k}: {v}\n" for k, v in info.items())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--rounds", type=int, default=7, help="timed passes per decoder (the median is reported)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--out", default=str(RESULTS / "decode"))
    a = p.parse_args(argv)
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")
    torch.set_num_threads(1)  # one loader worker is one process on one core
    blobs = synthetic_jpegs(a.images)
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    reference = [pil_decode(b) for b in blobs]
    info = run_info(a, blobs)
    rows = decoders(a.device)
    diffs = {name: check_row(fn, tensors, blobs, reference, cuda="cuda" in name) for name, fn in rows.items()}
    seconds: dict[str, list[float]] = {name: [] for name in rows}
    for r in range(a.rounds):  # the decoders in turn within each round: a drift of the machine hits them alike
        for name, fn in rows.items():
            seconds[name].append(time_pass(fn, tensors, blobs, cuda="cuda" in name))
        done = [summarise(name, a.images, s, diffs[name]) for name, s in seconds.items()]
        last = r == a.rounds - 1
        publish(a.out, table(done, info, a.device), {"rows": done, "info": info, "complete": last}, quiet=not last)
    return 0


if __name__ == "__main__":
    sys.exit(main())
