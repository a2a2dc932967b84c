"""Make sure Fashion-MNIST is on this machine.

    python pipeline/fetch_data.py [--raw-dir data/raw]

In order: files already under RAW/FashionMNIST/raw/ or /usr/share/datasets/fashion-mnist/;
torchvision's download into RAW (needs internet); the Debian package
``dataset-fashion-mnist`` through apt-get (root only); else a message saying how
to get it, and exit status 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline.prep.fashion_mnist import HOW_TO_GET_FMNIST, download_fmnist, fmnist_files


def apt_install() -> bool:
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"]
    if subprocess.run(cmd, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env)
        return subprocess.run(cmd, env=env).returncode == 0
    return True


def fetch(raw_dir: str) -> dict | None:
    files = fmnist_files(raw_dir)
    if files is None:
        print(f"Fashion-MNIST not found locally; trying torchvision's download into {raw_dir} ...", flush=True)
        try:
            download_fmnist(raw_dir)
        except Exception as e:  # no internet
            print(f"download failed ({type(e).__name__}); trying apt-get install dataset-fashion-mnist ...", flush=True)
            apt_install()
        files = fmnist_files(raw_dir)
    return files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--raw-dir", default="data/raw")
    a = p.parse_args(argv)
    files = fetch(a.raw_dir)
    if files is None:
        print("error: " + HOW_TO_GET_FMNIST.format(raw=Path(a.raw_dir).resolve()), file=sys.stderr)
        return 1
    print(f"Fashion-MNIST: {Path(files['train_images']).parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
