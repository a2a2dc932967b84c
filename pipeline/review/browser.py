"""A page rendered by headless Chromium into a PNG: what the report looks like in a browser
(the tests' check that it renders, the README's screenshot)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    """The path of a Chromium or Chrome executable, or None."""
    return next((p for p in map(shutil.which, NAMES) if p), None)


def screenshot(
    page: str | Path, png: str | Path, *, width: int = 1280, height: int = 2400, timeout: float = 120.0
) -> Path:
    """Render the local file ``page`` at ``width``×``height`` CSS pixels into ``png``."""
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError(
            f"no Chromium found (looked for {', '.join(NAMES)}); on Debian: apt-get install chromium"
        )
    png = Path(png).resolve()
    cmd = [
        exe,
        "--headless",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
        f"--screenshot={png}",
        Path(page).resolve().as_uri(),
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0 or not png.is_file():
        raise RuntimeError(f"chromium could not render {page}: exit {out.returncode}\n{out.stderr[-2000:]}")
    return png
