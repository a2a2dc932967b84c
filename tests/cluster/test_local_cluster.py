"""The cluster YAMLs under Ray's real autoscaler on this machine (cluster/local_cluster.py):
the fake multi-node config derived from each YAML, then one local cluster from aws.yaml at
zero workers that jobs scale up and, once idle, back down, as the autoscaler itself reports."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml

from cluster import local_cluster
from pipeline.prep.fashion_mnist import fmnist_files
from pipeline.training.run.launch import max_resources
from tests.conftest import ROOT
from tests.helpers import check_sweep_table

YAMLS = {name: yaml.safe_load((ROOT / "cluster" / name).read_text()) for name in ("aws.yaml", "gcp.yaml")}


@pytest.mark.parametrize("name", sorted(YAMLS))
def test_the_local_config_keeps_the_yamls_node_types(name):
    from ray.autoscaler._private.util import validate_config

    cloud = YAMLS[name]
    fake = local_cluster.fake_config(cloud)
    validate_config(
        json.loads(json.dumps(fake))
    )  # Ray's schema and checks (prepare_config wants a file the wheel lacks)
    assert fake["provider"]["type"] == "fake_multinode"
    workers = {k: v for k, v in cloud["available_node_types"].items() if k != cloud["head_node_type"]}
    fake_types = fake["available_node_types"]
    assert set(fake_types) == set(workers) | {local_cluster.HEAD_TYPE}
    for type_name, node in workers.items():
        got = fake_types[type_name]
        assert (got["min_workers"], got["max_workers"]) == (node["min_workers"], node["max_workers"])
        assert {k: v for k, v in got["resources"].items() if k != "object_store_memory"} == node["resources"]
    head = cloud["available_node_types"][cloud["head_node_type"]]["resources"]
    assert fake_types[local_cluster.HEAD_TYPE]["resources"] == head == {"CPU": 0}  # no work fits on the head
    assert fake["max_workers"] == cloud["max_workers"]
    assert fake["idle_timeout_minutes"] == pytest.approx(cloud["idle_timeout_minutes"] * local_cluster.IDLE_SCALE)
    assert any(n["resources"].get("GPU", 0) == 0 for n in workers.values())  # a CPU type: use_gpu=false jobs
    assert any(n["resources"].get("GPU", 0) > 0 for n in workers.values())


def test_a_node_type_without_explicit_resources_is_refused():
    cloud = json.loads(json.dumps(YAMLS["aws.yaml"]))
    cloud["available_node_types"]["gpu-1"]["resources"] = {}
    with pytest.raises(ValueError, match="node type 'gpu-1': resources must name CPU"):
        local_cluster.fake_config(cloud)


def test_what_the_autoscaler_can_add_is_read_from_its_config():
    """The GPU decision's view of an autoscaling cluster: each type × its max_workers."""
    aws = max_resources(YAMLS["aws.yaml"])
    assert aws["GPU"] == 16 * 1 + 4 * 4 and aws["CPU"] == 8 * 8 + 16 * 8 + 4 * 48
    assert max_resources(YAMLS["gcp.yaml"])["GPU"] == 16 * 1 + 2 * 8


STATUS = """======== Autoscaler status: 2026-12-06 07:54:08 ========
Node status
---------------------------------------------------------------
Active:
 1 ray.head.default
 2 cpu-8
Idle:
 1 gpu-1
Pending:
 ray.worker.gpu, 1 launching
Recent failures:
 (no failures)

Resources
---------------------------------------------------------------
Total Usage:
 1.0/16.0 CPU
"""


def test_node_counts_read_the_autoscalers_report():
    assert local_cluster.node_counts(STATUS) == {"cpu-8": 2, "gpu-1": 1}
    assert local_cluster.node_counts(STATUS.replace(" 2 cpu-8\n", "").replace(" 1 gpu-1\n", "")) == {}


# ---- the real autoscaler: one local cluster from aws.yaml, at zero workers ---------------------

ENV = {"RAY_AUTH_MODE": "disabled"}
TIMEOUT_S = 420


def ray_running_here() -> bool:
    from ray._private.utils import read_ray_address

    from pipeline.training.run.launch import stale_ray_address

    address = read_ray_address()
    return bool(address) and not stale_ray_address(address)


@pytest.fixture(scope="module")
def cluster():
    if ray_running_here():
        pytest.skip("a `ray start` cluster runs on this machine: the local-cluster tests would stop it")
    if fmnist_files(ROOT / "data" / "raw") is None:
        pytest.fail("Fashion-MNIST is missing: run `make data` (the Makefile's test target does)")
    local_cluster.up(ROOT / "cluster" / "aws.yaml", env=ENV)
    try:
        from ray.job_submission import JobSubmissionClient

        yield JobSubmissionClient(local_cluster.DASHBOARD)
    finally:
        local_cluster.down()


def smoke_args(tmp_path, *extra: str) -> list[str]:
    """A small smoke run's settings: 2 epochs (1 warm-up) on 600 images."""
    return [
        "--config",
        "smoke",
        f"data.raw_dir={ROOT / 'data' / 'raw'}",
        f"data.shard_root={tmp_path / 'shards'}",
        f"run.storage_path={tmp_path / 'runs'}",
        "data.max_train=600",
        "optim.epochs=2",
        "optim.milestones=[2]",
        "run.report=false",
        *extra,
    ]


def run_job(client, entrypoint: list[str], *, watch) -> tuple[str, list[dict], str]:
    """Submit ``entrypoint``; poll the autoscaler's report until the job ends and ``watch(counts)``
    has held (or ``TIMEOUT_S``). Returns ``(final status, node counts seen, job logs)``."""
    from ray.job_submission import JobStatus

    job = client.submit_job(entrypoint=" ".join([sys.executable, *entrypoint]), runtime_env={"env_vars": ENV})
    seen, end = [], time.monotonic() + TIMEOUT_S
    while time.monotonic() < end:
        seen.append(local_cluster.node_counts(local_cluster.status(env=ENV)))
        st = client.get_job_status(job)
        if st in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED) and any(map(watch, seen)):
            break
        time.sleep(1)
    else:
        client.stop_job(job)
    return str(client.get_job_status(job)), seen, client.get_job_logs(job)


def steps(seen: list[dict]) -> list[dict]:
    """The node counts seen, repeats dropped: how the cluster went."""
    return [c for i, c in enumerate(seen) if i == 0 or c != seen[i - 1]]


def back_to_zero() -> str:
    held, report = local_cluster.wait_for(lambda counts: not counts, timeout=120, env=ENV)
    assert held, report
    return report


def say(test: str, seen: list[dict]) -> None:
    """The node counts the autoscaler reported, for ``pytest -s`` (and the closing notes)."""
    print(f"\n{test}: worker nodes per type, as ray status went: {steps(seen) + [{}]}")


@pytest.mark.autoscaler
def test_a_cpu_job_adds_a_cpu_node_trains_there_and_the_node_goes_when_idle(cluster, tmp_path):
    assert local_cluster.node_counts(local_cluster.status(env=ENV)) == {}  # starts at zero workers
    args = [str(ROOT / "pipeline" / "train.py"), *smoke_args(tmp_path, "scale.use_gpu=false", "run.name=cpu")]
    status, seen, logs = run_job(cluster, args, watch=lambda c: c.get("cpu-8", 0) >= 1)
    assert status == "SUCCEEDED", logs[-3000:]
    assert any(c == {"cpu-8": 1} for c in seen), seen  # the autoscaler added the CPU type, nothing else
    assert (tmp_path / "runs" / "cpu" / "metrics.json").is_file()  # trained: the head has 0 CPUs, so on that node
    assert "done in " in logs and "Traceback" not in logs
    back_to_zero()
    say("cpu job", seen)


@pytest.mark.autoscaler
def test_a_default_job_gets_a_gpu_node_and_stops_in_one_line_without_cuda(cluster, tmp_path):
    args = [str(ROOT / "pipeline" / "train.py"), *smoke_args(tmp_path, "run.name=gpu")]  # scale.use_gpu=auto
    status, seen, logs = run_job(cluster, args, watch=lambda c: c.get("gpu-1", 0) >= 1)
    assert status == "FAILED", logs[-3000:]
    assert any(c.get("gpu-1", 0) == 1 for c in seen) and not any(c.get("cpu-8") for c in seen), seen
    last = logs.strip().splitlines()[-1]
    assert last.startswith("error: Ray gave this job a GPU on node ") and "scale.use_gpu=false" in last, logs[-3000:]
    assert "Traceback" not in logs
    back_to_zero()
    say("gpu job", seen)


@pytest.mark.autoscaler
def test_a_sweep_of_two_concurrent_trials_scales_to_two_nodes_and_back(cluster, tmp_path):
    # one trial's worker takes 6 of a cpu-8 node's 8 CPUs: two trials at once need two nodes
    args = [
        str(ROOT / "tune" / "sweep.py"),
        *smoke_args(tmp_path, "scale.use_gpu=false", "scale.cpus_per_worker=6", "scale.threads=1"),
        "--samples",
        "2",
        "--scheduler",
        "fifo",  # ASHA may stop one trial at its rung: Tune kills it, and its node stays until Ray's request expires
        "--name",
        "sweep",
    ]
    status, seen, logs = run_job(cluster, args, watch=lambda c: c.get("cpu-8", 0) >= 2)
    assert status == "SUCCEEDED", logs[-3000:]
    # both trials' workers at once, each on a node of its own (Ray's autoscaler may briefly add a
    # third while Ray Train's resource request and the trials' placement groups overlap)
    assert max(c.get("cpu-8", 0) for c in seen) >= 2, steps(seen)
    assert "best configuration (by val_acc)" in logs
    check_sweep_table(tmp_path / "runs" / "sweep", trials=2)  # ranked by clean validation, as each run says
    back_to_zero()
    say("sweep", seen)


def test_the_command_line_says_what_it_does():
    out = subprocess.run(
        [sys.executable, str(ROOT / "cluster" / "local_cluster.py"), "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "fake multi-node provider" in out.stdout
