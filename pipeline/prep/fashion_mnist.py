"""Fashion-MNIST's idx release as in-memory arrays, before noise and sharding.

Fashion-MNIST is looked for, in order, under ``RAW/FashionMNIST/raw/`` (as
torchvision lays it out, gunzipped or not) and in ``/usr/share/datasets/fashion-mnist/``
(Debian's ``dataset-fashion-mnist``); failing both, torchvision downloads it
into ``RAW`` where there is internet.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")
FMNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FMNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
HOW_TO_GET_FMNIST = (
    "Fashion-MNIST not found. Get it with one of:\n"
    "  sudo apt-get install dataset-fashion-mnist   (Debian/Ubuntu; files land in /usr/share/datasets/fashion-mnist)\n"
    "  python -c \"import torchvision; torchvision.datasets.FashionMNIST('{raw}', download=True)\"   (needs internet)\n"
    "or put the four idx files (optionally .gz) in {raw}/FashionMNIST/raw/."
)


@dataclass
class ImageArrays:
    """Images ``(N, H, W)`` or ``(N, H, W, 3)`` uint8 and labels ``(N,)`` int64."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def read_idx(path: Path) -> np.ndarray:
    """Read an idx-ubyte file (optionally gzipped) into a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise PipelineError(f"{path}: cannot read ({e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise PipelineError(f"{path}: not an idx-ubyte file (bad magic number)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise PipelineError(f"{path}: holds {body.size} bytes of data, its header says {int(np.prod(dims))}")
    return body.reshape(dims)


def _find(dirs: list[Path], stem: str) -> Path | None:
    for d in dirs:
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def fmnist_files(raw_dir: str | Path) -> dict[str, Path] | None:
    """The four files, or None where they are not all present locally."""
    dirs = [Path(raw_dir) / "FashionMNIST" / "raw", DEBIAN_FMNIST]
    found = {k: _find(dirs, v) for k, v in FMNIST_FILES.items()}
    return None if any(v is None for v in found.values()) else found


def download_fmnist(raw_dir: str | Path) -> None:
    """torchvision's download into ``raw_dir`` (needs internet)."""
    import torchvision

    torchvision.datasets.FashionMNIST(str(raw_dir), train=True, download=True)
    torchvision.datasets.FashionMNIST(str(raw_dir), train=False, download=True)


def load_fashion_mnist(raw_dir: str | Path, *, download: bool = True) -> ImageArrays:
    """Fashion-MNIST as arrays; downloads with torchvision only if nothing is local."""
    files = fmnist_files(raw_dir)
    if files is None and download:
        try:
            download_fmnist(raw_dir)
        except Exception:  # no internet, or the mirror is down: say how to get it
            pass
        files = fmnist_files(raw_dir)
    if files is None:
        raise PipelineError(HOW_TO_GET_FMNIST.format(raw=Path(raw_dir).resolve()))
    arrays = {k: read_idx(p) for k, p in files.items()}
    for split in ("train", "test"):
        n_img, n_lab = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_img != n_lab:
            raise PipelineError(f"Fashion-MNIST {split}: {n_img} images but {n_lab} labels")
    return ImageArrays(
        train_x=arrays["train_images"],
        train_y=arrays["train_labels"].astype(np.int64),
        test_x=arrays["test_images"],
        test_y=arrays["test_labels"].astype(np.int64),
        classes=FMNIST_CLASSES,
        mean=(0.2860,),
        std=(0.3530,),
    )
