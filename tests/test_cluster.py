"""The cluster definitions: every YAML passes the JSON schema shipped in the ray package
and Ray's own config preparation and checks; the KubeRay manifest runs pipeline/train.py."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from pipeline.training.cli import load_config
from tests.conftest import ROOT

CLUSTER = ROOT / "cluster"
LAUNCHER_YAMLS = sorted(p for p in CLUSTER.glob("*.yaml") if "kind:" not in p.read_text())


def ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def test_there_are_aws_and_gcp_definitions():
    assert {p.name for p in LAUNCHER_YAMLS} >= {"aws.yaml", "gcp.yaml"}


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_cluster_yaml_passes_rays_schema_and_checks(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load(path.read_text())
    jsonschema.validate(cfg, ray_schema())
    prepared = prepare_config(cfg)
    validate_config(prepared)
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["max_workers"] == 0 and head["resources"].get("GPU", 0) == 0  # a CPU head
    workers = [t for name, t in types.items() if name != prepared["head_node_type"]]
    assert workers and all(t["min_workers"] == 0 and t["max_workers"] > 0 for t in workers)
    text = path.read_text()
    assert "requirements.txt" in text and "0.0.0.0" not in text  # dashboard stays on localhost
    assert "rayproject/ray:2.60.0" in prepared["docker"]["image"]


def test_kuberay_rayjob_runs_the_pipeline():
    docs = list(yaml.safe_load_all((CLUSTER / "kuberay-rayjob.yaml").read_text()))
    job = next(d for d in docs if d["kind"] == "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    entry = job["spec"]["entrypoint"].split()
    assert entry[:2] == ["python", "/home/ray/mslc/pipeline/train.py"]
    i = entry.index("--config")
    cfg = load_config(entry[i + 1], entry[i + 2 :])  # the entrypoint's config is valid
    assert cfg.data.shards.startswith("/mnt/shared") and cfg.run.storage_path.startswith("/mnt/shared")
    spec = job["spec"]["rayClusterSpec"]
    assert spec["rayVersion"] == "2.60.0"
    gpu = spec["workerGroupSpecs"][0]
    assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] >= 1
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert claims == {"mslc-shared"}
    assert "Service" not in {d["kind"] for d in docs}  # nothing exposes the dashboard
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert "WORKDIR /home/ray/mslc" in dockerfile and "requirements.txt" in dockerfile
