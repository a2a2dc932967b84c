"""Raw data sets in their release formats → :class:`Items` per split, before sharding.

Every reader reports problems as :class:`Bad` records (file, line, key, reason)
instead of raising at the first one, so ``prepare`` can list them all and then
stop, or skip them with ``--skip-bad``. Readers never guess: a label file line
that does not parse, a key with two labels, a label out of range, a key with no
label are each reported.

Kinds and what they read (``raw`` is ``data.raw_dir``):

* ``fashion-mnist``: the four idx files (see :mod:`pipeline.prep.fashion_mnist`).
* ``cifar10`` / ``cifar100``: ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``
  in ``raw`` (or ``raw`` is the archive), the python-pickle release, read with an
  unpickler that only admits the numpy types those pickles hold.
* ``clothing1m``: the release tree: ``images/`` and the seven text files.
* ``folder``: ``raw`` is an image-folder tree ``CLASS/…/IMAGE`` or a CSV/Parquet
  listing with columns ``path`` and ``label``.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.prep.fashion_mnist import ImageArrays, load_fashion_mnist
from pipeline.prep.listings import Bad, class_ids, first_labels, read_key_labels, read_key_list, read_lines, read_table
from pipeline.shardset.spec import PrepareOptions

IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


CLOTHING1M_FILES = (
    "noisy_label_kv.txt",
    "clean_label_kv.txt",
    "noisy_train_key_list.txt",
    "clean_train_key_list.txt",
    "clean_val_key_list.txt",
    "clean_test_key_list.txt",
    "category_names_eng.txt",
)


@dataclass
class Items:
    """A list of samples of one split.

    keys : n unique strings (file keys or source indices); labels : (n,) int64 given;
    true : (n,) int64, -1 where unknown; source_index : (n,) int64 row in the raw source;
    images : (n, H, W[, 3]) uint8 for array sources, or None; paths : n files whose
    bytes are stored as they are, or None.
    """

    keys: list[str]
    labels: np.ndarray
    true: np.ndarray
    source_index: np.ndarray
    images: np.ndarray | None = None
    paths: list[str] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, idx) -> Items:
        idx = np.asarray(idx, dtype=np.int64)
        return Items(
            keys=[self.keys[i] for i in idx],
            labels=self.labels[idx],
            true=self.true[idx],
            source_index=self.source_index[idx],
            images=None if self.images is None else self.images[idx],
            paths=None if self.paths is None else [self.paths[i] for i in idx],
        )


@dataclass
class Source:
    """What a reader hands to planning.

    ``pool`` is the training pool. ``clean`` (if any) is a pool of clean samples the
    meta (and, without ``val``, validation) set is drawn from; without it they are
    drawn from ``pool`` by true label (synthetic-noise data sets). ``val`` / ``test``
    are given clean splits, or None. ``real_noise``: the labels are noisy as given
    (no synthetic noise may be added).
    """

    classes: tuple[str, ...]
    image: dict
    pool: Items
    clean: Items | None = None
    val: Items | None = None
    test: Items | None = None
    real_noise: bool = False
    clean_is_clean: bool = True
    bad: list[Bad] = field(default_factory=list)


def empty_items() -> Items:
    z = np.zeros(0, np.int64)
    return Items([], z, z.copy(), z.copy(), paths=[])


def read_source(data: PrepareOptions, raw: ImageArrays | None = None) -> tuple[Source, np.ndarray | None]:
    """The raw data set as a :class:`Source`, and CIFAR-100's coarse labels of the pool."""
    root = Path(data.raw_dir)
    if raw is not None or data.dataset == "fashion-mnist":
        a = raw if raw is not None else load_fashion_mnist(root)
        h, w = a.train_x.shape[1:3]
        image = {
            "channels": 1 if a.train_x.ndim == 3 else 3,
            "height": int(h),
            "width": int(w),
            "mean": list(a.mean),
            "std": list(a.std),
        }
        return Source(
            classes=tuple(a.classes),
            image=image,
            pool=array_items(a.train_x, a.train_y),
            test=array_items(a.test_x, a.test_y),
        ), None
    if data.dataset in ("cifar10", "cifar100"):
        return read_cifar(root, data.dataset)
    if data.dataset == "clothing1m":
        return read_clothing1m(root), None
    return read_folder(root, clean_list=data.clean_list, test_list=data.test_list), None


class _CifarUnpickler(pickle.Unpickler):
    """Admits only what the CIFAR python pickles hold: numpy arrays and builtins."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(data: bytes, where: str) -> dict:
    try:
        d = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:
        raise PipelineError(f"{where}: not a CIFAR python pickle ({e})") from None
    if not isinstance(d, dict):
        raise PipelineError(f"{where}: not a CIFAR python pickle (holds {type(d).__name__})")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def cifar_archive(raw: Path, kind: str) -> Path:
    name = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}[kind]
    if raw.is_file():
        return raw
    if not (raw / name).is_file():
        _try_torchvision_download(raw, kind)
    if not (raw / name).is_file():
        raise PipelineError(
            f"{raw / name}: not found. Put the python release archive there (from "
            f"https://www.cs.toronto.edu/~kriz/cifar.html) or pass --raw PATH_TO_ARCHIVE"
        )
    return raw / name


def _try_torchvision_download(raw: Path, kind: str) -> None:
    try:
        import torchvision

        cls = torchvision.datasets.CIFAR10 if kind == "cifar10" else torchvision.datasets.CIFAR100
        cls(str(raw), train=True, download=True)
    except Exception:  # no internet: the caller says where to put the archive
        pass


def read_cifar_members(archive: Path) -> dict[str, bytes]:
    """Every regular member of the archive by base name; a truncated or corrupt archive is an error."""
    out = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for m in tar:
                if m.isfile():
                    f = tar.extractfile(m)
                    out[Path(m.name).name] = f.read() if f else b""
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise PipelineError(f"{archive}: truncated or corrupt archive ({e})") from None
    return out


def _cifar_batch(members: dict[str, bytes], archive: Path, name: str, label_key: str) -> tuple[np.ndarray, ...]:
    if name not in members:
        raise PipelineError(f"{archive}: member {name!r} missing (not the python release, or truncated)")
    d = _unpickle(members[name], f"{archive}:{name}")
    try:
        x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        y = np.asarray(d[label_key], dtype=np.int64)
    except (KeyError, ValueError) as e:
        raise PipelineError(f"{archive}:{name}: unexpected layout ({e})") from None
    if len(x) != len(y):
        raise PipelineError(f"{archive}:{name}: {len(x)} images but {len(y)} labels")
    coarse = np.asarray(d["coarse_labels"], dtype=np.int64) if "coarse_labels" in d else None
    return x, y, coarse


def read_cifar(raw: Path, kind: str) -> tuple[Source, np.ndarray | None]:
    """CIFAR-10/100 from the release archive; also returns the training pool's coarse
    labels (CIFAR-100) for super-class noise."""
    archive = cifar_archive(raw, kind)
    members = read_cifar_members(archive)
    c = 10 if kind == "cifar10" else 100
    if kind == "cifar10":
        parts = [_cifar_batch(members, archive, f"data_batch_{i}", "labels") for i in range(1, 6)]
        tx, ty = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        ex, ey, _ = _cifar_batch(members, archive, "test_batch", "labels")
        tcoarse = None
        meta = _unpickle(members["batches.meta"], f"{archive}:batches.meta") if "batches.meta" in members else {}
        names = meta.get("label_names")
    else:
        tx, ty, tcoarse = _cifar_batch(members, archive, "train", "fine_labels")
        ex, ey, _ = _cifar_batch(members, archive, "test", "fine_labels")
        meta = _unpickle(members["meta"], f"{archive}:meta") if "meta" in members else {}
        names = meta.get("fine_label_names")
    for split, y in (("train", ty), ("test", ey)):
        if y.size and (y.min() < 0 or y.max() >= c):
            i = int(np.flatnonzero((y < 0) | (y >= c))[0])
            raise PipelineError(f"{archive}: {split} sample {i}: label {int(y[i])} is outside 0..{c - 1}")
    classes = (
        tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
        if names
        else tuple(f"class{i}" for i in range(c))
    )
    mean = tuple(float(v) for v in (tx.reshape(-1, 3).mean(0) / 255.0))
    std = tuple(float(v) for v in (tx.reshape(-1, 3).std(0) / 255.0))
    src = Source(
        classes=classes,
        image={"channels": 3, "height": 32, "width": 32, "mean": mean, "std": std},
        pool=array_items(tx, ty),
        test=array_items(ex, ey),
    )
    return src, tcoarse


def array_items(x: np.ndarray, y: np.ndarray) -> Items:
    n = len(y)
    return Items(
        keys=[str(i) for i in range(n)],
        labels=y.astype(np.int64),
        true=y.astype(np.int64),
        source_index=np.arange(n, dtype=np.int64),
        images=x,
    )


def read_clothing1m(root: Path) -> Source:
    """The Clothing1M release tree. Train = noisy train keys with their noisy labels
    (true label where the key has a clean one); the clean train keys are the pool the
    meta set is drawn from; val and test = the clean val and test keys."""
    missing = [n for n in CLOTHING1M_FILES if not (root / n).is_file()]
    if missing:
        raise PipelineError(f"{root}: not a Clothing1M release tree: missing {', '.join(missing)}")
    classes = tuple(line for _, line in read_lines(root / "category_names_eng.txt"))
    c = len(classes)
    if c < 2:
        raise PipelineError(f"{root / 'category_names_eng.txt'}: needs one class name per line, found {c}")
    bad: list[Bad] = []
    noisy = read_key_labels(root / "noisy_label_kv.txt", c, bad)
    clean = read_key_labels(root / "clean_label_kv.txt", c, bad)

    reported = {(b.file, b.key) for b in bad}  # keys the label files already reported

    def listed(list_name: str, labels: dict[str, int], kv_name: str, with_true: bool) -> Items:
        keys, lab, true = [], [], []
        for n, key in read_key_list(root / list_name):
            if key not in labels:
                if (kv_name, key) not in reported:
                    bad.append(Bad(list_name, key, f"no label in {kv_name}", n, "no_label"))
                continue
            keys.append(key)
            lab.append(labels[key])
            true.append(clean.get(key, -1) if with_true else labels[key])
        y = np.asarray(lab, dtype=np.int64)
        return Items(
            keys,
            y,
            np.asarray(true, dtype=np.int64),
            np.arange(len(keys), dtype=np.int64),
            paths=[str(root / k) for k in keys],
        )

    src = Source(
        classes=classes,
        image={"channels": 3, "height": None, "width": None, "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
        pool=listed("noisy_train_key_list.txt", noisy, "noisy_label_kv.txt", True),
        clean=listed("clean_train_key_list.txt", clean, "clean_label_kv.txt", False),
        val=listed("clean_val_key_list.txt", clean, "clean_label_kv.txt", False),
        test=listed("clean_test_key_list.txt", clean, "clean_label_kv.txt", False),
        real_noise=True,
        bad=bad,
    )
    return src


def read_listing(path: Path, classes: tuple[str, ...] | None, bad: list[Bad]) -> tuple[Items, tuple[str, ...]]:
    """A (path, label) listing; paths are relative to the listing's directory."""
    t, lines = read_table(path, ("path", "label"))
    classes, ids = class_ids(t["label"], classes)

    def rows():
        for n, p, v in zip(lines, t["path"], t["label"]):
            if str(v) not in ids:
                bad.append(
                    Bad(
                        path.name,
                        str(p),
                        f"label {str(v)!r} is not one of the {len(classes)} classes",
                        n,
                        "label_out_of_range",
                    )
                )
            else:
                yield n, str(p), ids[str(v)]

    chosen = first_labels(rows(), file=path.name, bad=bad, show=lambda i: repr(classes[i]))
    keys = list(chosen)
    labels = [chosen[k] for k in keys]
    paths = [str(Path(k) if Path(k).is_absolute() else path.parent / k) for k in keys]
    y = np.asarray(labels, dtype=np.int64)
    return Items(keys, y, np.full(len(y), -1, np.int64), np.arange(len(y), dtype=np.int64), paths=paths), classes


def read_tree(root: Path) -> tuple[Items, tuple[str, ...]]:
    """``root/CLASS/…/IMAGE``: classes are the sorted sub-directory names."""
    classes = tuple(sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")))
    if not classes:
        raise PipelineError(f"{root}: no class sub-directories (expected ROOT/CLASS/IMAGE)")
    keys, labels = [], []
    for i, name in enumerate(classes):
        for p in sorted((root / name).rglob("*")):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                keys.append(str(p.relative_to(root)))
                labels.append(i)
    y = np.asarray(labels, dtype=np.int64)
    return Items(
        keys, y, np.full(len(y), -1, np.int64), np.arange(len(y), dtype=np.int64), paths=[str(root / k) for k in keys]
    ), classes


def read_folder(raw: Path, *, clean_list: str = "", test_list: str = "") -> Source:
    """An image folder or a listing; optional listings of a clean subset (meta and
    validation sets are drawn from it) and of a test set."""
    bad: list[Bad] = []
    if raw.is_dir():
        pool, classes = read_tree(raw)
    elif raw.is_file():
        pool, classes = read_listing(raw, None, bad)
    else:
        raise PipelineError(f"{raw}: no such image folder or listing")
    clean = read_listing(Path(clean_list), classes, bad)[0] if clean_list else None
    test = read_listing(Path(test_list), classes, bad)[0] if test_list else None
    if clean is not None:
        clean = replace(clean, true=clean.labels.copy())
    if test is not None:
        test = replace(test, true=test.labels.copy())
    return Source(
        classes=classes,
        image={"channels": 3, "height": None, "width": None, "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
        pool=pool,
        clean=clean,
        test=test,
        real_noise=True,
        clean_is_clean=clean is not None,
        bad=bad,
    )
