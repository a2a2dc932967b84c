"""Decoding and augmenting training images on the device (``data.decode=gpu``).

The loader processes only read each sample's encoded bytes (no decode, no resize: a
Clothing1M-size JPEG costs a CPU core milliseconds to decode, which starves a GPU). The
training process then decodes a batch's JPEGs in one call to torchvision's batched
``decode_jpeg`` on the device (nvJPEG on CUDA), runs the training transform (the same
torchvision v2 transform the CPU path runs) on each image there, and stacks the batch.
On a CPU device the same code decodes in the training process.

Images that are not JPEG (a PNG in an image folder), and JPEGs the device's decoder refuses
(nvJPEG: CMYK, 12-bit), are decoded on the CPU with ``torchvision.io.decode_image`` and moved.
On CUDA the batched decode first waits for the current stream (:func:`wait_for_the_stream`). A sample that does not decode is named by its
shard and key, as on the CPU path; with ``data.bad_samples=skip`` it is left out of its
batch (the batch is one smaller).

The transform's random draws come from this class's own generator state, seeded per
epoch and rank like the loader processes' (the training's random state is not touched).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterable, Iterator

import torch
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from pipeline.errors import ShardError

JPEG_MAGIC = b"\xff\xd8"
# torchvision 0.29 (pinned) marks its image codecs deprecated in favour of TorchCodec, a further
# dependency; they work, and its warning would repeat for every batch.
warnings.filterwarnings(
    "ignore", message="The image decoding and encoding capabilities of TorchVision", category=DeprecationWarning
)


def is_jpeg(blob: torch.Tensor) -> bool:
    """``blob`` (n,) uint8: an encoded file; whether it starts like a JPEG."""
    return len(blob) >= 2 and bytes(blob[:2].tolist()) == JPEG_MAGIC


def _read_mode(channels: int) -> ImageReadMode:
    return {1: ImageReadMode.GRAY, 3: ImageReadMode.RGB}.get(channels, ImageReadMode.UNCHANGED)


def _decode_one(blob: torch.Tensor, *, mode: ImageReadMode, device: torch.device) -> torch.Tensor:
    """One image on ``device``: a JPEG by the device's decoder, and where that refuses it
    (nvJPEG: CMYK, 12-bit, some progressive files) by the CPU's; anything else on the CPU."""
    if is_jpeg(blob):
        try:
            return decode_jpeg(blob, mode=mode, device=device)
        except RuntimeError:
            pass  # the CPU decoder below: it raises, naming the reason, if the file is really broken
    return decode_image(blob, mode=mode).to(device, non_blocking=True)


def wait_for_the_stream(device: torch.device) -> None:
    """Before a batched CUDA decode: torchvision's ``decode_jpeg`` takes its outputs from the
    caching allocator on the current stream but writes them on a stream of its own that does
    not wait for the current one (pytorch/vision#9606), so memory the previous step's kernels
    still read could be overwritten. Waiting for the current stream closes that (one host
    wait a step, only with ``data.decode=gpu`` on CUDA)."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


def decode_images(
    blobs: list[torch.Tensor], where: list[str], *, device: torch.device, channels: int, bad_samples: str = "error"
) -> tuple[list[torch.Tensor], list[int]]:
    """Decode encoded images on ``device``.

    Parameters
    ----------
    blobs : list of (n_i,) uint8 CPU tensors, each an encoded image file.
    where : the sample each came from (``shard URL, sample KEY``), for errors.
    channels : 1 (grayscale) or 3 (RGB); 0 keeps each image's own.
    bad_samples : ``error`` raises :class:`ShardError` naming the sample; ``skip`` warns
        and leaves it out.

    Returns
    -------
    images : list of (C, H_i, W_i) uint8 tensors on ``device``.
    kept : the positions in ``blobs`` of the returned images.
    """
    mode = _read_mode(channels)
    jpeg = [i for i, b in enumerate(blobs) if is_jpeg(b)]
    out: dict[int, torch.Tensor] = {}
    if jpeg:
        wait_for_the_stream(device)
        try:
            out.update(zip(jpeg, decode_jpeg([blobs[i] for i in jpeg], mode=mode, device=device)))
        except RuntimeError:  # one is broken or refused: one by one, the CPU for those the device refuses
            out.clear()
    for i, b in enumerate(blobs):
        if i in out:
            continue
        try:
            out[i] = _decode_one(b, mode=mode, device=device)
        except RuntimeError as e:
            msg = f"{where[i]}: cannot decode image on {device.type} ({str(e).splitlines()[0]})"
            if bad_samples != "skip":
                raise ShardError(msg) from None
            print(f"warning: skipping a bad sample: {msg}", file=sys.stderr, flush=True)
    kept = sorted(out)
    return [out[i] for i in kept], kept


class DeviceAugment:
    """The training transform (a torchvision v2 transform on uint8 ``(C, H, W)``
    tensors, or None) applied to each decoded image on its device, with its own seeded
    random state; returns the stacked batch ``(n, C, H, W)`` uint8."""

    def __init__(self, transform: Callable | None, seed: int) -> None:
        self.transform = transform
        self.rng = torch.Generator().manual_seed(seed).get_state()

    def __call__(self, images: list[torch.Tensor]) -> torch.Tensor:
        if self.transform is None:
            return torch.stack(images)
        with torch.random.fork_rng(devices=[]):  # v2 transforms draw from the global CPU generator
            torch.set_rng_state(self.rng)
            out = torch.stack([self.transform(im) for im in images])
            self.rng = torch.get_rng_state()
        return out


def device_batches(
    batches: Iterable,
    *,
    device: torch.device,
    channels: int,
    transform: Callable | None,
    seed: int,
    bad_samples: str = "error",
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(blobs, labels, indices, where)`` batches of encoded images (a loader over a
    ``stream(..., raw=True)``) → ``(images (n, C, H, W) uint8 on device, labels, indices)``
    decoded and augmented on ``device``; a batch whose every sample was skipped is dropped."""
    augment = DeviceAugment(transform, seed)
    for blobs, y, idx, where in batches:
        images, kept = decode_images(blobs, where, device=device, channels=channels, bad_samples=bad_samples)
        if not kept:
            continue
        if len(kept) < len(blobs):
            keep = torch.tensor(kept)
            y, idx = y[keep], idx[keep]
        yield augment(images), y, idx
