"""A launcher YAML's node types on this machine, driven by Ray's real autoscaler.

    python cluster/local_cluster.py up cluster/aws.yaml     # head only; workers come when work asks
    python cluster/local_cluster.py status                  # the autoscaler's own view (ray status)
    python cluster/local_cluster.py down                    # ray stop: every Ray process here

Ray's fake multi-node provider (``provider: type: fake_multinode``, ``RAY_FAKE_CLUSTER=1``)
starts each "node" the autoscaler launches as a raylet on this machine; its CPUs and GPUs
are logical. The config is derived from the cloud YAML by :func:`fake_config` (same node
types, ``min_workers``, ``max_workers`` and ``resources``; ``idle_timeout_minutes`` scaled
down), so what the autoscaler does here is what it would do with that YAML's nodes. Jobs
are submitted as on a real cluster (``ray job submit --address http://127.0.0.1:8265``).
A GPU node here has no CUDA device: a job that asks for GPUs gets placed and then stops
with one line saying so (``scale.use_gpu=false`` trains on the CPU nodes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HEAD_TYPE = "ray.head.default"  # the fake provider's name for the head node (FAKE_HEAD_NODE_TYPE)
IDLE_SCALE = 0.01  # idle_timeout_minutes × this: 10 minutes on AWS → 6 s here
OBJECT_STORE_BYTES = 256 * 2**20  # per node: every "node" shares this machine's memory
PORT = 6379  # the head's GCS port (Ray's default, given explicitly)
DASHBOARD = "http://127.0.0.1:8265"


def fake_config(
    launcher: dict, *, idle_scale: float = IDLE_SCALE, object_store_bytes: int = OBJECT_STORE_BYTES
) -> dict:
    """The fake multi-node cluster config of a cluster-launcher config.

    launcher : a cluster YAML as loaded (``cluster/aws.yaml``, ``cluster/gcp.yaml``); every node
        type must name its ``resources`` (at least ``CPU``), as the autoscaler sees them.

    Worker node types keep their names, ``min_workers``, ``max_workers`` and ``resources``;
    the head becomes the provider's ``ray.head.default`` with the head type's resources;
    ``idle_timeout_minutes`` is multiplied by ``idle_scale``. Clouds, images, setup and
    file mounts are dropped: the nodes are processes on this machine."""
    types = launcher["available_node_types"]
    head = launcher["head_node_type"]
    out = {}
    for name, node in types.items():
        resources = dict(node.get("resources") or {})
        if "CPU" not in resources:
            raise ValueError(
                f"node type {name!r}: resources must name CPU (and GPU) explicitly for the local cluster, got {resources}"
            )
        if name == head:
            out[HEAD_TYPE] = {"resources": resources, "node_config": {}, "max_workers": 0}
        else:
            out[name] = {
                "resources": {**resources, "object_store_memory": object_store_bytes},
                "node_config": {},
                "min_workers": node.get("min_workers", 0),
                "max_workers": node["max_workers"],
            }
    empty_lists = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands")
    return {
        "cluster_name": f"{launcher['cluster_name']}-local",
        "max_workers": launcher["max_workers"],
        "upscaling_speed": launcher.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": launcher.get("idle_timeout_minutes", 5) * idle_scale,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "auth": {},
        "docker": {},
        "available_node_types": out,
        "head_node_type": HEAD_TYPE,
        **{k: [] for k in empty_lists},
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


def ray_cli() -> str:
    """The ``ray`` command of this interpreter's environment."""
    here = Path(sys.executable).parent / "ray"
    return str(here) if here.exists() else "ray"


def up(path: str | Path, *, env: dict | None = None, object_store_bytes: int = OBJECT_STORE_BYTES) -> Path:
    """Start the head of ``path``'s cluster here, its autoscaler driving fake nodes; returns
    the derived config's file. ``env``: extra environment for Ray's processes."""
    cfg = fake_config(yaml.safe_load(Path(path).read_text()), object_store_bytes=object_store_bytes)
    head = cfg["available_node_types"][HEAD_TYPE]["resources"]
    fd, config_file = tempfile.mkstemp(prefix="mslc-local-cluster-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(cfg, f, indent=1)
    cmd = [
        ray_cli(),
        "start",
        "--head",
        f"--port={PORT}",
        f"--autoscaling-config={config_file}",
        f"--num-cpus={head.get('CPU', 0)}",
        f"--num-gpus={head.get('GPU', 0)}",
        f"--object-store-memory={object_store_bytes}",
        "--disable-usage-stats",
    ]
    extra = {k: v for k, v in head.items() if k not in ("CPU", "GPU")}
    if extra:
        cmd.append(f"--resources={json.dumps(extra)}")
    full_env = {**os.environ, **(env or {}), "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    subprocess.run(cmd, env=full_env, check=True, stdout=subprocess.DEVNULL)
    return Path(config_file)


def down() -> None:
    """``ray stop --force``: the head, the autoscaler and every fake node (every Ray process here)."""
    subprocess.run([ray_cli(), "stop", "--force"], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def status(*, env: dict | None = None) -> str:
    """The autoscaler's own report (``ray status`` of this cluster's head, not of another Ray
    instance that may run here)."""
    r = subprocess.run(
        [ray_cli(), "status", f"--address=127.0.0.1:{PORT}"],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return r.stdout + r.stderr


def node_counts(report: str) -> dict[str, int]:
    """Worker nodes per node type in a ``ray status`` report: the ``N TYPE`` lines of its
    Active and Idle sections, the head left out."""
    counts: dict[str, int] = {}
    section = None
    for line in report.splitlines():
        s = line.strip()
        m = re.fullmatch(r"(\d+) (\S+)", s)
        if m is None:
            section = s if s.endswith(":") else section  # a section's title, else its other lines
        elif section in ("Active:", "Idle:") and m.group(2) != HEAD_TYPE:
            counts[m.group(2)] = counts.get(m.group(2), 0) + int(m.group(1))
    return counts


def wait_for(predicate, *, timeout: float, every: float = 1.0, env: dict | None = None) -> tuple[bool, str]:
    """Poll ``ray status`` until ``predicate(node_counts)`` holds or ``timeout`` s pass;
    returns ``(held, the last report)``."""
    end = time.monotonic() + timeout
    while True:
        report = status(env=env)
        if predicate(node_counts(report)):
            return True, report
        if time.monotonic() > end:
            return False, report
        time.sleep(every)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="cluster/local_cluster.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="start the head; the autoscaler adds the YAML's node types as work asks")
    u.add_argument("yaml", help="a cluster launcher YAML (cluster/aws.yaml, cluster/gcp.yaml)")
    sub.add_parser("status", help="the autoscaler's report and the worker nodes per type")
    sub.add_parser("down", help="stop every Ray process on this machine")
    a = p.parse_args(argv)
    if a.cmd == "up":
        try:
            config = up(a.yaml)
        except (ValueError, KeyError, OSError) as e:
            print(f"error: {a.yaml}: {e}", file=sys.stderr)
            return 2
        except subprocess.CalledProcessError as e:
            print(
                f"error: ray start failed (exit {e.returncode}); is a Ray cluster already running here?",
                file=sys.stderr,
            )
            return 1
        print(f"local cluster from {a.yaml} (autoscaling config {config}); submit with --address {DASHBOARD}")
    elif a.cmd == "status":
        report = status()
        print(report)
        print(f"worker nodes: {node_counts(report) or 'none'}")
    else:
        down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
