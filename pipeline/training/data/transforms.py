"""Per-preset image transforms (torchvision v2) on uint8 ``(C, H, W)`` tensors.

Normalization is not here: the worker normalizes whole batches on the device,
so what crosses the loader and the host→device copy stays uint8.

* ``none``: images as stored (all of one size, e.g. Fashion-MNIST).
* ``cifar``: training: random crop with padding 4, horizontal flip; evaluation: as stored.
* ``imagenet``: training: resize the shorter side to ``size·256/224``, random crop
  ``size``, horizontal flip; evaluation: the same resize and a center crop.
"""

from __future__ import annotations

from collections.abc import Callable

from torchvision.transforms import v2

KINDS = ("none", "cifar", "imagenet")


def resize_for(size: int) -> int:
    return round(size * 256 / 224)


def build_transform(kind: str, *, train: bool, image_size: int, stored_size: int | None) -> Callable | None:
    """The transform for a split (``train`` selects the augmenting one), or None.

    ``stored_size`` is the images' side as stored (None if they vary in size).
    """
    if kind not in KINDS:
        raise ValueError(f"transform must be one of {KINDS}, got {kind!r}")
    if kind == "none":
        return None
    if kind == "cifar":
        if stored_size is None:
            raise ValueError("the cifar transform needs images of one size; use data.transform=imagenet")
        return v2.Compose([v2.RandomCrop(stored_size, padding=4), v2.RandomHorizontalFlip()]) if train else None
    resize = v2.Resize(resize_for(image_size), antialias=True)
    if train:
        return v2.Compose([resize, v2.RandomCrop(image_size), v2.RandomHorizontalFlip()])
    return v2.Compose([resize, v2.CenterCrop(image_size)])


def output_size(kind: str, *, image_size: int, stored_size: int | None) -> int:
    """The side of the images the model sees."""
    if kind == "imagenet":
        return image_size
    if stored_size is None:
        raise ValueError("images vary in size: they need data.transform=imagenet (resize and crop)")
    return stored_size
