"""Text and table listings of keys and labels, and the bad-record type every reader reports.

Readers never guess: a line that does not parse, a key with two labels, a label out of
range, a key with no label are each a :class:`Bad` record (file, line, key, reason).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pipeline.errors import PipelineError

K = TypeVar("K", str, int)  # a listing's key: a file key or a row index
BAD_KINDS = (
    "missing_image",
    "corrupt_image",
    "conflicting_labels",
    "label_out_of_range",
    "no_label",
    "unparsable_line",
    "not_in_training_set",
)


@dataclass(frozen=True)
class Bad:
    """One problem in the input: where it is, what is wrong, and its kind (one of
    :data:`BAD_KINDS`, set by the code that finds it; the manifest counts them)."""

    file: str
    key: str
    reason: str
    line: int | None
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in BAD_KINDS:
            raise ValueError(f"bad-record kind must be one of {BAD_KINDS}, got {self.kind!r}")

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.key}: {self.reason}" if self.key else f"{where}: {self.reason}"

    def to_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "key": self.key, "reason": self.reason, "kind": self.kind}


def read_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank lines of a text file as ``(line number, text)``; CRLF, a BOM and
    surrounding blanks are tolerated."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PipelineError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PipelineError(f"{path}: not UTF-8 text ({e})") from None
    return [(n, s.strip()) for n, s in enumerate(text.splitlines(), 1) if s.strip()]


def parse_label(text: str, num_classes: int) -> tuple[int | None, str, str]:
    """``(class id, '', '')`` for an integer in ``0..num_classes-1``, else ``(None, kind, reason)``."""
    try:
        v = int(text)
    except ValueError:
        return None, "unparsable_line", f"label {text!r} is not an integer"
    if not 0 <= v < num_classes:
        return None, "label_out_of_range", f"label {v} is outside 0..{num_classes - 1}"
    return v, "", ""


def first_labels(rows: Iterable[tuple[int, K, int]], *, file: str, bad: list[Bad], show=str) -> dict[K, int]:
    """The one label-listing rule: ``(line, key, label)`` rows → ``{key: label}``.

    A key listed again with the same label keeps its first line; a key given two
    different labels is reported (naming both lines, labels shown with ``show``) and
    left out. ``rows`` may report its own unparsable rows to ``bad`` as it is consumed,
    so the reports stay in line order.
    """
    out: dict[K, int] = {}
    first: dict[K, int] = {}
    conflicted: set[K] = set()
    for n, key, label in rows:
        if key in out and out[key] != label:
            bad.append(
                Bad(
                    file,
                    str(key),
                    f"labelled {show(out[key])} on line {first[key]} and {show(label)} here",
                    n,
                    "conflicting_labels",
                )
            )
            conflicted.add(key)
        elif key not in out:
            out[key], first[key] = label, n
    for key in conflicted:
        del out[key]
    return out


def read_key_labels(path: Path, num_classes: int, bad: list[Bad]) -> dict[str, int]:
    """A ``KEY LABEL`` per line file (Clothing1M's) → {key: label}, by :func:`first_labels`."""

    def rows():
        for n, line in read_lines(path):
            parts = line.split()
            if len(parts) != 2:
                bad.append(
                    Bad(
                        path.name,
                        parts[0] if parts else "",
                        f"expected 'KEY LABEL', got {line!r}",
                        n,
                        "unparsable_line",
                    )
                )
                continue
            label, kind, why = parse_label(parts[1], num_classes)
            if label is None:
                bad.append(Bad(path.name, parts[0], why, n, kind))
            else:
                yield n, parts[0], label

    return first_labels(rows(), file=path.name, bad=bad)


def read_key_list(path: Path) -> list[tuple[int, str]]:
    """One key per line → ``[(line, key)]`` without repeats (a repeat keeps its first line)."""
    seen: set[str] = set()
    out = []
    for n, line in read_lines(path):
        if line not in seen:
            seen.add(line)
            out.append((n, line))
    return out


def read_table(path: Path, columns: tuple[str, ...]) -> tuple[dict[str, list], list[int]]:
    """A CSV (header row) or Parquet file → {column: values}, with the source line of each row."""
    if not path.is_file():
        raise PipelineError(f"{path}: not found")
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            t = pq.read_table(path).to_pydict()
        except Exception as e:
            raise PipelineError(f"{path}: cannot read Parquet ({e})") from None
        lines = list(range(2, 2 + len(next(iter(t.values()), []))))
    else:
        text = "\n".join(line for _, line in read_lines(path))
        rows = list(csv.reader(io.StringIO(text)))
        numbers = [n for n, _ in read_lines(path)]
        if not rows:
            raise PipelineError(f"{path}: empty")
        header = [h.strip() for h in rows[0]]
        t = {h: [] for h in header}
        lines = []
        for n, row in zip(numbers[1:], rows[1:]):
            if len(row) != len(header):
                raise PipelineError(f"{path}:{n}: {len(row)} fields, the header has {len(header)}")
            for h, v in zip(header, row):
                t[h].append(v.strip())
            lines.append(n)
    absent = [c for c in columns if c not in t]
    if absent:
        raise PipelineError(f"{path}: no column {absent[0]!r} (columns: {', '.join(t)})")
    return t, lines


def class_ids(values: list, classes: tuple[str, ...] | None) -> tuple[tuple[str, ...], dict[str, int]]:
    """Labels may be integers or class names; names map by sorted order unless ``classes`` is given."""
    if classes is None:
        strs = sorted({str(v) for v in values})
        if all(s.lstrip("-").isdigit() for s in strs):
            n = max((int(s) for s in strs), default=-1) + 1
            classes = tuple(str(i) for i in range(n))
        else:
            classes = tuple(strs)
    ids = {name: i for i, name in enumerate(classes)}
    if all(name.isdigit() for name in classes):
        ids = {str(i): i for i in range(len(classes))}
    return classes, ids


def read_label_override(
    path: Path, classes: tuple[str, ...], bad: list[Bad], *, known: dict[str, set] | None = None
) -> tuple[str, dict[str | int, int]]:
    """``--labels FILE``: CSV or Parquet with a ``label`` column and a ``key`` or
    ``index`` column (``index`` is the sample's row in the raw training set).

    Returns ``(column, {key or index: label})`` by :func:`first_labels`; labels may be
    class ids or names. Bad rows (unparsable, out of range, one key with two labels, and
    with ``known`` (``{"key": keys, "index": indices}`` of the raw training set) a key or
    index that names no raw training sample) go to ``bad``.
    """
    t, lines = read_table(path, ("label",))
    column = "key" if "key" in t else "index" if "index" in t else None
    if column is None:
        raise PipelineError(f"{path}: needs a 'key' or an 'index' column beside 'label' (columns: {', '.join(t)})")
    names = {name: i for i, name in enumerate(classes)}

    def rows():
        for n, k, v in zip(lines, t[column], t["label"]):
            key: str | int = str(k)
            if column == "index":
                try:
                    key = int(k)
                except (TypeError, ValueError):
                    bad.append(Bad(path.name, str(k), "index is not an integer", n, "unparsable_line"))
                    continue
            if known is not None and key not in known[column]:
                bad.append(
                    Bad(
                        path.name,
                        str(key),
                        f"no sample of the raw training set has this {column}",
                        n,
                        "not_in_training_set",
                    )
                )
                continue
            label, kind, why = parse_label(str(v), len(classes))
            if label is None and str(v) in names:
                label = names[str(v)]
            if label is None:
                bad.append(Bad(path.name, str(key), why, n, kind))
            else:
                yield n, key, label

    return column, first_labels(rows(), file=path.name, bad=bad)
