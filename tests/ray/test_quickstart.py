"""The README's quick start for your own images, run as written on a fake photo folder.

The three commands are read from README.md (so the README cannot drift from what runs);
``photos``, ``data/shards/photos`` and ``runs/NAME`` become temporary paths, and each command
gets options that make it fit a test (a tiny folder: fewer meta and validation images, a
small model without downloaded weights, two epochs). ``make run`` runs the first two lines of
the quick start (``make run`` and ``make test`` themselves)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.rundir import RunDir
from tests import fakes
from tests.conftest import ROOT, ray_env

FIT = {  # what each command gets to fit a test, beyond what the README says
    "prepare.py": ["--n-meta", "12", "--n-val", "9", "--shard-size", "32"],
    "train.py": [
        "model.arch=small-cnn",
        "model.pretrained=false",
        "data.image_size=32",
        "data.loader_workers=0",
        "optim.epochs=2",
        "meta.warmup_epochs=1",
        "optim.milestones=[2]",
        "optim.batch_size=16",
        "meta.meta_batch_size=8",
        "run.tensorboard=false",
    ],
    "report.py": [],
}


def quickstart_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Quick start")
    block = text[start : text.index("## ", start + 5)]
    own = block[block.index("Your own images") :]
    code = re.search(r"```bash\n(.*?)```", own, re.S).group(1)
    return [shlex.split(line.split("#")[0]) for line in code.splitlines() if line.strip()]


def test_the_readme_quick_start_for_your_own_images_runs(tmp_path):
    cmds = quickstart_commands()
    assert [c[1] for c in cmds] == ["pipeline/prepare.py", "pipeline/train.py", "pipeline/report.py"]
    truth = fakes.make_folder(tmp_path / "photos", per_class=40)
    verified = [(p, ["cat", "dog", "frog"][y]) for p, y in truth.items() if int(p[-7:-4]) < 10]
    fakes.write_csv(tmp_path / "photos" / "verified.csv", "path,label", verified)
    run_dir = None
    for cmd in cmds:
        args = []
        for a in cmd[2:]:
            a = a.replace("data/shards/photos", str(tmp_path / "shards" / "photos"))
            a = re.sub(r"^photos", str(tmp_path / "photos"), a)
            a = a.replace("runs/NAME", str(run_dir)) if run_dir else a
            args.append(a)
        extra = FIT[Path(cmd[1]).name]
        if cmd[1].endswith("train.py"):
            extra = extra + [f"run.storage_path={tmp_path / 'runs'}"]
        out = subprocess.run(
            [sys.executable, cmd[1], *args, *extra],
            cwd=ROOT,
            env=ray_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, f"{cmd}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
        if cmd[1].endswith("train.py"):
            run_dir = Path(re.search(r"run directory:\s+(\S+)", out.stdout).group(1))
            assert "next: review relabel.csv" in out.stdout and "flags:" in out.stdout
            assert (RunDir(run_dir).report).is_file() and (RunDir(run_dir).budget).is_file()
    assert (run_dir / "relabel-0.9.csv").is_file()
    t = pq.read_table(RunDir(run_dir).labels).to_pydict()
    assert set(t["given_name"]) <= {"cat", "dog", "frog"}
