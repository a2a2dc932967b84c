"""The cluster definitions: every launcher YAML passes the JSON schema shipped in the ray
package and Ray's own config preparation and checks; the KubeRay manifests pass KubeRay
v1.7.0's CRD schemas (copied under tests/assets/) and run pipeline/train.py."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from pipeline.training.settings.cli import load_config
from tests.conftest import ROOT

CLUSTER = ROOT / "cluster"
LAUNCHER_YAMLS = sorted(p for p in CLUSTER.glob("*.yaml") if not p.name.startswith("kuberay-"))


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


KUBERAY_CRDS = ROOT / "tests" / "assets" / "kuberay-v1.7.0"


def crd_schema(name: str) -> dict:
    """The v1 OpenAPI schema of a KubeRay v1.7.0 CRD (``x-kubernetes-*`` keys are ignored)."""
    crd = yaml.safe_load((KUBERAY_CRDS / f"ray.io_{name}.yaml").read_text())
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]


def kuberay_docs(name: str) -> list[dict]:
    return list(yaml.safe_load_all((CLUSTER / name).read_text()))


def rayjob() -> dict:
    (job,) = kuberay_docs("kuberay-rayjob.yaml")
    return job


def test_the_rayjob_and_its_cluster_pass_kuberay_v1_7_schemas():
    job = rayjob()
    assert job["kind"] == "RayJob" and job["apiVersion"] == "ray.io/v1"
    jsonschema.Draft7Validator(crd_schema("rayjobs")).validate(job)
    cluster = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "c"},
        "spec": job["spec"]["rayClusterSpec"],
    }
    jsonschema.Draft7Validator(crd_schema("rayclusters")).validate(cluster)


def test_the_schema_check_catches_a_wrong_type_or_value():
    bad = rayjob()
    bad["spec"]["preRunningDeadlineSeconds"] = "30m"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(crd_schema("rayjobs")).validate(bad)
    bad = rayjob()
    bad["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "password"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(crd_schema("rayjobs")).validate(bad)


def test_the_rayjob_is_hardened():
    spec = rayjob()["spec"]
    assert 60 <= spec["preRunningDeadlineSeconds"] <= 3600  # a Pending claim or pull fails the job, not hangs it
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0" and cluster["enableInTreeAutoscaling"]
    assert cluster["authOptions"] == {"mode": "token"}  # dashboard and job API need the token
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no worker fits on the head
    gpu = cluster["workerGroupSpecs"][0]
    assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] >= 1
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "0.0.0.0" not in (CLUSTER / "kuberay-rayjob.yaml").read_text()


def test_the_rayjob_runs_the_pipeline_elastically_on_the_gpu_group():
    entry = rayjob()["spec"]["entrypoint"].split()
    assert entry[:2] == ["python", "/home/ray/mslc/pipeline/train.py"]
    i = entry.index("--config")
    cfg = load_config(entry[i + 1], entry[i + 2 :])  # the entrypoint's config is valid
    assert cfg.data.shards == "/mnt/shared/shards/clothing1m" and cfg.run.storage_path.startswith("/mnt/shared")
    assert (
        cfg.scale.elastic
        and cfg.scale.max_workers == rayjob()["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"]
    )
    assert cfg.scale.use_gpu == "true" and cfg.scale.max_failures == -1 and cfg.run.mid_epoch_checkpoints


def test_storage_and_prepare_are_separate_from_the_job():
    """``kubectl delete -f kuberay-rayjob.yaml`` leaves the claim; the prepare Job writes the
    shards the RayJob reads, with a command prepare.py accepts, on the same claim."""
    from pipeline.prepare import data_from_kind_args

    assert {d["kind"] for d in kuberay_docs("kuberay-rayjob.yaml")} == {"RayJob"}
    (claim,) = kuberay_docs("kuberay-storage.yaml")
    assert claim["kind"] == "PersistentVolumeClaim" and claim["metadata"]["name"] == "mslc-shared"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    (job,) = kuberay_docs("kuberay-prepare.yaml")
    assert job["kind"] == "Job" and job["apiVersion"] == "batch/v1"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and job["spec"]["activeDeadlineSeconds"] > 0
    cmd = pod["containers"][0]["command"]
    assert cmd[:2] == ["python", "pipeline/prepare.py"] and pod["containers"][0]["workingDir"] == "/home/ray/mslc"
    data, out = data_from_kind_args(cmd[2:])
    assert data.dataset == "clothing1m" and str(out) == rayjob_config().data.shards
    (upload,) = kuberay_docs("kuberay-upload.yaml")
    assert data.raw_dir.startswith("/mnt/shared/raw") and upload["kind"] == "Pod"
    for pod_spec in (pod, upload["spec"], rayjob()["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]):
        claims = {v["persistentVolumeClaim"]["claimName"] for v in pod_spec["volumes"] if "persistentVolumeClaim" in v}
        assert claims == {"mslc-shared"}
    assert "Service" not in {
        d["kind"]
        for n in ("kuberay-rayjob.yaml", "kuberay-storage.yaml", "kuberay-prepare.yaml", "kuberay-upload.yaml")
        for d in kuberay_docs(n)
    }  # nothing exposes the dashboard
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert "WORKDIR /home/ray/mslc" in dockerfile and "requirements.txt" in dockerfile


def rayjob_config():
    entry = rayjob()["spec"]["entrypoint"].split()
    i = entry.index("--config")
    return load_config(entry[i + 1], entry[i + 2 :])


# The submit-time GPU decision against fake cluster views (issue 13): a GPU node type scaled to
# zero must not make a GPU job train on the head's CPUs.
HEAD_ONLY_NOW = {"CPU": 4.0, "memory": 1e10}
GPU_TYPES_AT_ZERO = {"CPU": 4 + 8 * 16, "GPU": 8 * 1}  # Ray's max resources over all node types at max_workers
CPU_TYPES_ONLY = {"CPU": 4 + 8 * 16}


@pytest.mark.parametrize(
    "setting, now, can_add, want",
    [
        ("auto", HEAD_ONLY_NOW, GPU_TYPES_AT_ZERO, True),  # GPUs from zero: ask for them
        ("auto", HEAD_ONLY_NOW, CPU_TYPES_ONLY, False),
        ("auto", HEAD_ONLY_NOW, None, False),  # a fixed CPU cluster (no autoscaling config)
        ("auto", {"CPU": 16.0, "GPU": 2.0}, None, True),
        ("true", HEAD_ONLY_NOW, GPU_TYPES_AT_ZERO, True),
        ("false", {"CPU": 16.0, "GPU": 2.0}, GPU_TYPES_AT_ZERO, False),
    ],
)
def test_use_gpu_looks_at_what_the_autoscaler_can_add(setting, now, can_add, want):
    from pipeline.training.run.launch import resolve_use_gpu

    assert resolve_use_gpu(setting, now=now, can_add=can_add, warn=lambda m: None) is want


def test_use_gpu_true_where_no_gpu_can_ever_come_is_an_error_or_a_warning():
    from pipeline.errors import ConfigError
    from pipeline.training.run.launch import resolve_use_gpu

    with pytest.raises(ConfigError, match="scale.use_gpu=true, but this cluster has no GPUs and its autoscaler"):
        resolve_use_gpu("true", now=HEAD_ONLY_NOW, can_add=CPU_TYPES_ONLY)
    said = []
    assert resolve_use_gpu("true", now=HEAD_ONLY_NOW, can_add=None, warn=said.append) is True
    assert "waits until GPU nodes join" in said[0]


@pytest.mark.parametrize("preset", ["clothing1m", "folder", "cifar10-sym40", "cifar100-sym40"])
def test_gpu_presets_planned_on_a_cluster_with_gpu_nodes_at_zero_request_gpu_workers(preset, monkeypatch):
    from pipeline.training.run import launch
    from pipeline.training.settings.cli import load_config
    from pipeline.training.settings.presets import PRESETS

    assert PRESETS[preset]().scale.use_gpu == "true"
    monkeypatch.setattr(launch, "cluster_view", lambda: (HEAD_ONLY_NOW, GPU_TYPES_AT_ZERO))
    from pipeline.worker import train_loop_per_worker

    trainer = launch.build_trainer(
        load_config(preset, ["scale.workers=4", "run.name=plan"]), worker=train_loop_per_worker
    )
    scaling = trainer.scaling_config
    assert scaling.use_gpu and scaling.num_workers == 4 and scaling.resources_per_worker["GPU"] == 1


def test_the_sweep_uses_the_same_rule(monkeypatch):
    from pipeline.training.run import launch
    from pipeline.training.settings.cli import load_config
    from tune.sweep import trial_resources

    monkeypatch.setattr(launch, "cluster_view", lambda: (HEAD_ONLY_NOW, GPU_TYPES_AT_ZERO))
    assert trial_resources(load_config("fmnist-sym40", ["scale.workers=2"]))["GPU"] == 2


def test_a_sweep_on_a_cluster_at_zero_runs_as_many_trials_as_the_autoscaler_can_hold(monkeypatch):
    """Not one at a time because no worker is up yet: what the autoscaler can add counts."""
    from pipeline.training.run import launch
    from pipeline.training.settings.cli import load_config
    from tune.sweep import concurrent_trials

    monkeypatch.setattr(launch, "cluster_view", lambda: ({"CPU": 0.0}, {"CPU": 8 * 8}))
    assert concurrent_trials(load_config("smoke", ["scale.use_gpu=false", "scale.cpus_per_worker=6"])) == 10
    monkeypatch.setattr(launch, "cluster_view", lambda: ({"CPU": 0.0}, None))  # no autoscaler: one at a time
    assert concurrent_trials(load_config("smoke", ["scale.use_gpu=false"])) == 1
