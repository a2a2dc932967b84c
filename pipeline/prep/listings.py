"""Text and table listings of keys and labels, and the bad-record type every reader reports.

Readers never guess: a line that does not parse, a key with two labels, a label out of
range, a key with no label are each a :class:`Bad` record (file, line, key, reason).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError


@dataclass(frozen=True)
class Bad:
    """One problem in the input: where it is and what is wrong."""

    file: str
    key: str
    reason: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.key}: {self.reason}" if self.key else f"{where}: {self.reason}"

    def to_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "key": self.key, "reason": self.reason}


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


def parse_label(text: str, num_classes: int) -> tuple[int | None, str]:
    try:
        v = int(text)
    except ValueError:
        return None, f"label {text!r} is not an integer"
    if not 0 <= v < num_classes:
        return None, f"label {v} is outside 0..{num_classes - 1}"
    return v, ""


def read_key_labels(path: Path, num_classes: int, bad: list[Bad]) -> dict[str, int]:
    """A ``KEY LABEL`` per line file → {key: label}. Bad lines, out-of-range labels and
    keys given two different labels go to ``bad`` (a conflicting key is dropped)."""
    out: dict[str, int] = {}
    first_line: dict[str, int] = {}
    conflicted: set[str] = set()
    for n, line in read_lines(path):
        parts = line.split()
        if len(parts) != 2:
            bad.append(Bad(path.name, parts[0] if parts else "", f"expected 'KEY LABEL', got {line!r}", n))
            continue
        key, raw = parts
        label, why = parse_label(raw, num_classes)
        if label is None:
            bad.append(Bad(path.name, key, why, n))
            continue
        if key in out and out[key] != label:
            bad.append(Bad(path.name, key, f"labelled {out[key]} on line {first_line[key]} and {label} here", n))
            conflicted.add(key)
        elif key not in out:
            out[key], first_line[key] = label, n
    for key in conflicted:
        del out[key]
    return out


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


def read_label_override(path: Path, classes: tuple[str, ...], bad: list[Bad]
                        ) -> tuple[str, dict[str | int, int]]:
    """``--labels FILE``: CSV or Parquet with a ``label`` column and a ``key`` or
    ``index`` column (``index`` is the sample's row in the raw training set).

    Returns ``(column, {key or index: label})``; labels may be class ids or names.
    Bad rows (unparsable, out of range, one key with two labels) go to ``bad``.
    """
    t, lines = read_table(path, ("label",))
    column = "key" if "key" in t else "index" if "index" in t else None
    if column is None:
        raise PipelineError(f"{path}: needs a 'key' or an 'index' column beside 'label' (columns: {', '.join(t)})")
    names = {name: i for i, name in enumerate(classes)}
    out: dict[str | int, int] = {}
    first: dict[str | int, int] = {}
    conflicted = set()
    for n, k, v in zip(lines, t[column], t["label"]):
        key: str | int = str(k)
        if column == "index":
            try:
                key = int(k)
            except (TypeError, ValueError):
                bad.append(Bad(path.name, str(k), "index is not an integer", n))
                continue
        label, why = parse_label(str(v), len(classes))
        if label is None and str(v) in names:
            label = names[str(v)]
        if label is None:
            bad.append(Bad(path.name, str(key), why, n))
            continue
        if key in out and out[key] != label:
            bad.append(Bad(path.name, str(key), f"labelled {out[key]} on line {first[key]} and {label} here", n))
            conflicted.add(key)
        elif key not in out:
            out[key], first[key] = label, n
    for key in conflicted:
        del out[key]
    return column, out
