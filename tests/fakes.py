"""Small fakes of the real data sets in their real on-disk formats.

* :func:`make_clothing1m`: the Clothing1M release tree: ``images/…/*.jpg`` and the
  seven text files, written with CRLF line ends and blank lines as some copies have.
* :func:`make_cifar_archive`: ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``
  holding the python pickles with bytes keys, as the release does.
* :func:`make_folder`: an image-folder tree ``ROOT/CLASS/*.jpg`` and a CSV listing.

Every image's class is visible in it (a class colour plus noise), so a model can learn.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.training.settings.config import DataConfig

C1M_CLASSES = (
    "T-Shirt",
    "Shirt",
    "Knitwear",
    "Chiffon",
    "Sweater",
    "Hoodie",
    "Windbreaker",
    "Jacket",
    "Downcoat",
    "Suit",
    "Shawl",
    "Dress",
    "Vest",
    "Underwear",
)


def class_image(
    label: int, rng: np.random.Generator, size: tuple[int, int] = (20, 24), num_classes: int = 14
) -> np.ndarray:
    """(H, W, 3) uint8 whose mean colour encodes the class."""
    hue = np.array([label * 37 % 256, label * 91 % 256, (num_classes - label) * 53 % 256], dtype=np.int64)
    img = hue + rng.integers(-30, 30, size=(*size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def jpeg_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_lines(path: Path, lines: list[str]) -> None:
    """CRLF line ends, a blank line at the start, in the middle and at the end."""
    mid = len(lines) // 2
    body = ["", *lines[:mid], "", *lines[mid:], "", ""]
    path.write_bytes("\r\n".join(body).encode())


@dataclass
class FakeClothing1M:
    root: Path
    noisy_train: list[str]
    clean_train: list[str]
    val: list[str]
    test: list[str]
    noisy_label: dict[str, int]
    clean_label: dict[str, int]
    true: dict[str, int] = field(default_factory=dict)


def make_clothing1m(
    root: Path,
    *,
    n_noisy: int = 280,
    n_clean: int = 70,
    n_val: int = 28,
    n_test: int = 28,
    overlap: int = 30,
    noise: float = 0.35,
    seed: int = 0,
) -> FakeClothing1M:
    """A tiny Clothing1M tree; ``overlap`` noisy-train keys also have a clean label."""
    rng = np.random.default_rng(seed)
    c = len(C1M_CLASSES)
    total = n_noisy + n_clean + n_val + n_test
    true = np.arange(total) % c
    rng.shuffle(true)
    keys = [f"images/{i % 10}/{i // 10:02d}/{1000 + i}.jpg" for i in range(total)]
    for k, y in zip(keys, true):
        p = root / k
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(jpeg_bytes(class_image(int(y), rng)))
    noisy_train = keys[:n_noisy]
    clean_train = keys[n_noisy : n_noisy + n_clean]
    val = keys[n_noisy + n_clean : n_noisy + n_clean + n_val]
    test = keys[n_noisy + n_clean + n_val :]
    flip = rng.random(n_noisy) < noise
    noisy_label = {
        k: int((y + rng.integers(1, c)) % c if f else y) for k, y, f in zip(noisy_train, true[:n_noisy], flip)
    }
    clean_keys = noisy_train[:overlap] + clean_train + val + test
    clean_label = {k: int(true[keys.index(k)]) for k in clean_keys}
    write_lines(root / "noisy_label_kv.txt", [f"{k} {v}" for k, v in noisy_label.items()])
    write_lines(root / "clean_label_kv.txt", [f"{k} {v}" for k, v in clean_label.items()])
    write_lines(root / "noisy_train_key_list.txt", noisy_train)
    write_lines(root / "clean_train_key_list.txt", clean_train)
    write_lines(root / "clean_val_key_list.txt", val)
    write_lines(root / "clean_test_key_list.txt", test)
    write_lines(root / "category_names_eng.txt", list(C1M_CLASSES))
    return FakeClothing1M(
        root, noisy_train, clean_train, val, test, noisy_label, clean_label, {k: int(y) for k, y in zip(keys, true)}
    )


def append_line(path: Path, line: str) -> None:
    path.write_bytes(path.read_bytes() + (line + "\r\n").encode())


def make_cifar_archive(
    directory: Path, kind: str = "cifar10", *, n_per_batch: int = 60, n_test: int = 100, seed: int = 0
) -> tuple[Path, dict]:
    """The python release archive with the real member names and pickle layout.

    Returns the archive path and the arrays written (``train_x`` (N, 32, 32, 3),
    ``train_y``, ``test_x``, ``test_y``, and ``train_coarse`` for CIFAR-100).
    """
    rng = np.random.default_rng(seed)
    c = 10 if kind == "cifar10" else 100
    coarse_of = np.arange(c) // 5 if kind == "cifar100" else None

    def batch(n):
        y = rng.integers(0, c, n)
        x = np.stack([class_image(int(k), rng, (32, 32), c) for k in y])
        return x, y

    members: dict[str, bytes] = {}
    arrays: dict = {}

    def dump(obj) -> bytes:
        return pickle.dumps(obj, protocol=2)

    def flat(x):
        return x.transpose(0, 3, 1, 2).reshape(len(x), -1)

    if kind == "cifar10":
        top = "cifar-10-batches-py"
        xs, ys = [], []
        for i in range(1, 6):
            x, y = batch(n_per_batch)
            xs.append(x)
            ys.append(y)
            members[f"{top}/data_batch_{i}"] = dump(
                {
                    b"batch_label": f"training batch {i} of 5".encode(),
                    b"labels": y.tolist(),
                    b"data": flat(x),
                    b"filenames": [b"f.png"] * len(y),
                }
            )
        tx, ex = np.concatenate(xs), None
        ty = np.concatenate(ys)
        ex, ey = batch(n_test)
        members[f"{top}/test_batch"] = dump({b"labels": ey.tolist(), b"data": flat(ex)})
        members[f"{top}/batches.meta"] = dump({b"label_names": [f"c{i}".encode() for i in range(c)], b"num_vis": 3072})
        name = "cifar-10-python.tar.gz"
    else:
        top = "cifar-100-python"
        tx, ty = batch(5 * n_per_batch)
        ex, ey = batch(n_test)
        members[f"{top}/train"] = dump(
            {b"fine_labels": ty.tolist(), b"coarse_labels": coarse_of[ty].tolist(), b"data": flat(tx)}
        )
        members[f"{top}/test"] = dump(
            {b"fine_labels": ey.tolist(), b"coarse_labels": coarse_of[ey].tolist(), b"data": flat(ex)}
        )
        members[f"{top}/meta"] = dump(
            {
                b"fine_label_names": [f"f{i}".encode() for i in range(c)],
                b"coarse_label_names": [f"s{i}".encode() for i in range(c // 5)],
            }
        )
        arrays["train_coarse"] = coarse_of[ty]
        name = "cifar-100-python.tar.gz"
    path = directory / name
    directory.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    arrays.update(train_x=tx, train_y=ty, test_x=ex, test_y=ey)
    return path, arrays


def make_folder(root: Path, *, classes=("cat", "dog", "frog"), per_class: int = 30, seed: int = 0) -> dict[str, int]:
    """``root/CLASS/NNN.jpg`` (one PNG per class too); returns {relative path: class id}."""
    rng = np.random.default_rng(seed)
    out = {}
    for i, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            rel = f"{name}/{j:03d}.{'png' if j == 0 else 'jpg'}"
            img = class_image(i, rng, (18, 22), len(classes))
            if j == 0:
                Image.fromarray(img).save(root / rel)
            else:
                (root / rel).write_bytes(jpeg_bytes(img))
            out[rel] = i
    return out


def write_csv(path: Path, header: str, rows: list[tuple]) -> Path:
    path.write_text(header + "\n" + "".join(",".join(str(v) for v in r) + "\n" for r in rows))
    return path


def quiet(_):
    """A ``log`` that says nothing."""


def c1m_cfg(root: Path, **kw) -> DataConfig:
    base = dict(
        dataset="clothing1m",
        raw_dir=str(root),
        noise="none",
        noise_rate=0.0,
        n_meta=14,
        n_val=0,
        shard_size=64,
        shuffle_buffer=32,
    )
    return DataConfig(**{**base, **kw})
