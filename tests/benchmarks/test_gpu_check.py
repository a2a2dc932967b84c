"""``benchmarks/gpu_check.sh``, the script a GPU visit runs, dry-run on this CPU
(``DEVICE=cpu QUICK=1``: one tiny batch size where a GPU runs 32 and 128): both parts finish,
write every file they promise into ``$OUT`` (a GPU run writes 5 and 7, at most the 8 the device
tool brings back), each table marked complete, and a failing step does not skip the next."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.conftest import ROOT


def dry_run(part: str, out, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", part],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "DEVICE": "cpu", "QUICK": "1", "OUT": str(out), **env},
    )


@pytest.mark.parametrize(
    "part, files",
    [
        ("a", {"gpu_check_a.log", "step_cost_gpu_resnet18_32_b2.md", "step_cost_gpu_resnet18_32_b2.json"}),
        (
            "b",
            {
                "gpu_check_b.log",
                "step_cost_gpu_resnet50_32_b2.md",
                "step_cost_gpu_resnet50_32_b2.json",
                "throughput_gpu.md",
                "throughput_gpu.json",
                "decode_gpu.md",
                "decode_gpu.json",
            },
        ),
    ],
)
def test_each_part_of_the_gpu_check_runs_and_writes_its_files(tmp_path, part, files):
    out = dry_run(part, tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert {p.name for p in tmp_path.iterdir()} == files and len(files) <= 8
    for f in files:
        if f.endswith(".json"):
            assert json.loads((tmp_path / f).read_text())["complete"] is True, f


def test_a_failing_step_does_not_skip_the_next(tmp_path):
    out = dry_run("a", tmp_path, PY="/bin/false")  # every python step fails at once
    assert out.returncode == 1
    log = (tmp_path / "gpu_check_a.log").read_text()
    assert "== part_tests FAILED" in log and "== step18 FAILED" in log
