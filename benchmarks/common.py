"""What every benchmark does with its table: print it and write it as Markdown and JSON."""

from __future__ import annotations

import json
from pathlib import Path


def publish(out: str | Path, markdown: str, payload: dict) -> None:
    """Print ``markdown`` and write ``out.md`` and ``out.json`` (``out`` without extension)."""
    print(markdown)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(markdown)
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1))
