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


# The submit-time GPU decision against fake cluster views (issue 13): a GPU node type scaled to
# zero must not make a GPU job train on the head's CPUs.
HEAD_ONLY_NOW = {"CPU": 4.0, "memory": 1e10}
GPU_TYPES_AT_ZERO = {"CPU": 4 + 8 * 16, "GPU": 8 * 1}  # Ray's max resources over all node types at max_workers
CPU_TYPES_ONLY = {"CPU": 4 + 8 * 16}


@pytest.mark.parametrize("setting, now, can_add, want", [
    ("auto", HEAD_ONLY_NOW, GPU_TYPES_AT_ZERO, True),  # GPUs from zero: ask for them
    ("auto", HEAD_ONLY_NOW, CPU_TYPES_ONLY, False),
    ("auto", HEAD_ONLY_NOW, None, False),  # a fixed CPU cluster (no autoscaling config)
    ("auto", {"CPU": 16.0, "GPU": 2.0}, None, True),
    ("true", HEAD_ONLY_NOW, GPU_TYPES_AT_ZERO, True),
    ("false", {"CPU": 16.0, "GPU": 2.0}, GPU_TYPES_AT_ZERO, False),
])
def test_use_gpu_looks_at_what_the_autoscaler_can_add(setting, now, can_add, want):
    from pipeline.training.launch import resolve_use_gpu

    assert resolve_use_gpu(setting, now=now, can_add=can_add, warn=lambda m: None) is want


def test_use_gpu_true_where_no_gpu_can_ever_come_is_an_error_or_a_warning():
    from pipeline.errors import ConfigError
    from pipeline.training.launch import resolve_use_gpu

    with pytest.raises(ConfigError, match="scale.use_gpu=true, but this cluster has no GPUs and its autoscaler"):
        resolve_use_gpu("true", now=HEAD_ONLY_NOW, can_add=CPU_TYPES_ONLY)
    said = []
    assert resolve_use_gpu("true", now=HEAD_ONLY_NOW, can_add=None, warn=said.append) is True
    assert "waits until GPU nodes join" in said[0]


@pytest.mark.parametrize("preset", ["clothing1m", "folder", "cifar10-sym40", "cifar100-sym40"])
def test_gpu_presets_planned_on_a_cluster_with_gpu_nodes_at_zero_request_gpu_workers(preset, monkeypatch):
    from pipeline.training import launch
    from pipeline.training.cli import load_config
    from pipeline.training.presets import PRESETS

    assert PRESETS[preset]().scale.use_gpu == "true"
    monkeypatch.setattr(launch, "cluster_view", lambda: (HEAD_ONLY_NOW, GPU_TYPES_AT_ZERO))
    trainer = launch.build_trainer(load_config(preset, ["scale.workers=4", "run.name=plan"]))
    scaling = trainer.scaling_config
    assert scaling.use_gpu and scaling.num_workers == 4 and scaling.resources_per_worker["GPU"] == 1


def test_the_sweep_uses_the_same_rule(monkeypatch):
    from pipeline.training import launch
    from pipeline.training.cli import load_config
    from tune.sweep import trial_resources

    monkeypatch.setattr(launch, "cluster_view", lambda: (HEAD_ONLY_NOW, GPU_TYPES_AT_ZERO))
    assert trial_resources(load_config("fmnist-sym40", ["scale.workers=2"]))["GPU"] == 2
