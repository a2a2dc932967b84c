"""The driver's side of a run: name it, check its shards, and build the Ray
Train ``TorchTrainer`` that runs a worker function on each worker."""

from __future__ import annotations

import dataclasses
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from pipeline import shardset
from pipeline.errors import CheckpointError
from pipeline.rundir import METRICS, RunDir
from pipeline.training.methods.state import build_bare_model, build_transforms
from pipeline.training.run import checkpoint
from pipeline.training.settings.config import Config, ConfigError, replace
from pipeline.weights import load_into, weights_source


def name_run(cfg: Config) -> Config:
    """Give the run a unique name unless one was set; refuse to reuse an existing run dir."""
    name = cfg.run.name or f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    check_storage(cfg.run.storage_path)
    run_dir = RunDir.of(cfg.run.storage_path, name).path
    if "://" not in cfg.run.storage_path and run_dir.is_symlink():
        target = run_dir.resolve()
        if not target.is_relative_to(Path(cfg.run.storage_path).resolve()):
            raise ConfigError(
                f"run.name={name!r}: {run_dir} is a link to {target}, outside run.storage_path; "
                "choose another name or storage path"
            )
    if (run_dir / METRICS).exists():
        raise ConfigError(f"run.name={name!r}: {run_dir} already holds a run; choose another name")
    return replace(cfg, run=dataclasses.replace(cfg.run, name=name))


def check_storage(storage_path: str) -> None:
    """``run.storage_path`` must be (or be creatable as) a writable directory: checked here,
    before Ray starts, rather than met by the first checkpoint inside a worker."""
    if "://" in storage_path:
        return  # an object store: Ray's storage layer checks it
    p = Path(storage_path)
    existing = next(q for q in (p, *p.parents) if q.exists())
    if not existing.is_dir():
        raise ConfigError(f"run.storage_path={storage_path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"run.storage_path={storage_path}: {existing} is not writable by this user")


def check_data(cfg: Config, shard_dir: str) -> None:
    """Check the shards at ``shard_dir`` (``cfg.data.shard_dir()``, written by the entry point
    if they were missing), the label table, the transform, ``run.resume_from`` and
    ``model.weights`` before any worker starts."""
    manifest = shardset.load_manifest(shard_dir)
    if manifest.get("dataset") != cfg.data.dataset:
        raise ConfigError(
            f"{shard_dir} holds {manifest.get('dataset')} shards but data.dataset={cfg.data.dataset}; "
            f"use --config {manifest.get('dataset')} or set data.dataset"
        )
    shardset.verify(shard_dir, manifest, level=cfg.data.verify)
    shardset.read_labels_table(shard_dir, manifest)
    _, _, size = build_transforms(cfg, manifest)
    if not (cfg.run.resume_from or weights_source(cfg.model)):
        return
    model = build_bare_model(
        cfg, num_classes=manifest["num_classes"], channels=manifest["image"]["channels"], size=size
    )
    if cfg.run.resume_from:
        check_resume(cfg, manifest, model)
    if weights_source(cfg.model):  # fetched here too (a URL is cached on this node): one line if it cannot be had
        load_into(model, weights_source(cfg.model))


def check_resume(cfg: Config, manifest: dict, model: torch.nn.Module) -> None:
    """Open ``run.resume_from`` here, before Ray starts, and check that it fits this run
    (format, model, class count, sample count): :class:`CheckpointError` says what differs.
    ``model``: this run's model, as built (its names and shapes are compared)."""
    state = checkpoint.load_state(cfg.run.resume_from)
    why = checkpoint.state_mismatch(
        state,
        model=model.state_dict(),
        num_samples=manifest["splits"]["train"]["count"],
        num_classes=manifest["num_classes"],
    )
    if why is not None:
        raise CheckpointError(f"run.resume_from={cfg.run.resume_from}: cannot resume this run from it: {why}")


def resolve_use_gpu(setting: str, *, now: dict, can_add: dict | None, warn=None) -> bool:
    """Whether workers ask for GPUs, from ``scale.use_gpu`` and a view of the cluster.

    now : the resources the cluster has now (``ray.cluster_resources()``).
    can_add : the most of each resource its autoscaler can provide (all node types at their
        ``max_workers``; Ray's ``get_max_resources_from_cluster_config``), None when the
        cluster publishes no autoscaling config (a fixed or local cluster).

    ``auto`` asks for GPUs when the cluster has any now *or its autoscaler can add some*: a
    GPU node type scaled to zero must not make a GPU job train on the head's CPUs.
    ``true`` on a cluster that has none and whose autoscaler cannot add any is an error,
    rather than a job that waits forever; with no autoscaling config to consult it warns.
    """
    gpus = now.get("GPU", 0) > 0 or (can_add is not None and can_add.get("GPU", 0) > 0)
    if setting == "false":
        return False
    if setting == "auto":
        return gpus
    if not gpus:
        if can_add is not None:
            raise ConfigError(
                "scale.use_gpu=true, but this cluster has no GPUs and its autoscaler cannot add any "
                f"(it can provide: {can_add}); set scale.use_gpu=false to train on CPUs"
            )
        (warn or print)(
            "warning: scale.use_gpu=true on a cluster with no GPUs now and no autoscaling config to "
            "say it can add some: the job waits until GPU nodes join (scale.use_gpu=false trains on CPUs)"
        )
    return True


def max_resources(autoscaling_config: dict) -> dict:
    """The most of each resource an autoscaling config's nodes can provide: each node type's
    ``resources`` × its ``max_workers`` (the head type once), summed over the types. Types
    whose ``resources`` are left for the cloud to infer count as none."""
    total: dict = {}
    head = autoscaling_config.get("head_node_type")
    for name, node in (autoscaling_config.get("available_node_types") or {}).items():
        count = 1 if name == head else int(node.get("max_workers", 0))
        for key, value in (node.get("resources") or {}).items():
            total[key] = total.get(key, 0) + value * count
    return total


def monitor_autoscaling_config(gcs_address: str) -> dict | None:
    """The autoscaling config of the cluster at ``gcs_address`` as its autoscaler (Ray's
    ``monitor.py`` on the head, started by ``ray up`` or ``ray start --autoscaling-config``)
    reads it, where that process runs on this machine (a job's driver runs on the head);
    None elsewhere or if the file cannot be read."""
    import yaml

    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):  # Linux, as Ray's heads are
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:  # the process ended, or is not ours to read
            continue
        if not any(a.endswith("monitor.py") for a in args) or f"--gcs-address={gcs_address}" not in args:
            continue
        path = next((a.split("=", 1)[1] for a in args if a.startswith("--autoscaling-config=")), None)
        try:
            return yaml.safe_load(Path(os.path.expanduser(path)).read_text()) if path else None
        except (OSError, yaml.YAMLError):
            return None
    return None


def cluster_view() -> tuple[dict, dict | None]:
    """``(resources now, the most its autoscaler can provide or None)`` of the connected cluster.

    The most is Ray's published cluster config where there is one (KubeRay), else the
    config file the cluster's autoscaler runs with on this node (``ray up``'s
    ``ray_bootstrap_config.yaml``, a local fake cluster's): Ray publishes none for those,
    and without it a GPU node type scaled to zero would look like a cluster without GPUs."""
    import ray

    try:
        from ray._private.state import state

        can_add = state.get_max_resources_from_cluster_config()
    except Exception:  # an internal API: without it, fall back to the autoscaler's config file
        can_add = None
    if can_add is None:
        try:
            config = monitor_autoscaling_config(ray.get_runtime_context().gcs_address)
        except Exception:  # /proc or the runtime context failed: what the cluster has now decides
            config = None
        can_add = max_resources(config) if config else None
    return ray.cluster_resources(), can_add


def build_trainer(cfg: Config, *, worker: Callable[[dict], None], callbacks: list | None = None):
    """Ray Train's ``TorchTrainer`` for ``cfg``: ``worker`` is what each worker runs, given the
    config as a dict (:func:`pipeline.worker.train_loop_per_worker`: training and the review's
    outputs)."""
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchTrainer

    now, can_add = cluster_view()
    use_gpu = resolve_use_gpu(
        cfg.scale.use_gpu, now=now, can_add=can_add, warn=lambda m: print(m, file=sys.stderr, flush=True)
    )
    return TorchTrainer(
        worker,
        train_loop_config=cfg.to_dict(),
        scaling_config=ScalingConfig(
            num_workers=cfg.scale.ray_num_workers(),
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cfg.scale.cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
        ),
        run_config=RayRunConfig(
            name=cfg.run.name,
            storage_path=cfg.run.storage_path,
            failure_config=FailureConfig(max_failures=cfg.scale.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints or None),  # Ray keeps the latest
            callbacks=callbacks or None,
        ),
    )


def gpu_node_report() -> dict:
    """What torch sees on the node this runs on (a Ray task given one GPU)."""
    import ray

    return {
        "cuda": torch.cuda.is_available(),
        "node": ray.get_runtime_context().get_node_id(),
        "host": socket.gethostname(),
        "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
    }


def check_gpu_nodes(*, log=print) -> None:
    """Before GPU workers start: one task given a GPU (the autoscaler adds a GPU node if none
    is up, as the workers would need) says whether torch finds CUDA there. A node whose GPUs
    are only a Ray resource (no driver, a container without the GPU runtime, a local fake
    cluster) ends the job with one :class:`ConfigError` line instead of NCCL's traceback
    from inside Ray Train's worker group."""
    import ray

    log("checking that torch finds CUDA on a GPU node (the autoscaler adds one if none is up)")
    r = ray.get(ray.remote(num_gpus=1, num_cpus=0, max_retries=0)(gpu_node_report).remote())
    if not r["cuda"]:
        raise ConfigError(
            f"Ray gave this job a GPU on node {r['node'][:12]} ({r['host']}, CUDA_VISIBLE_DEVICES="
            f"{r['visible']}), but torch {r['torch']} (CUDA build: {r['cuda_build']}) finds no CUDA device "
            "there: the node's GPUs are a Ray resource only (no driver, no GPU runtime in the container, or "
            "a local fake cluster); set scale.use_gpu=false to train on CPUs"
        )


#: Ray lines kept out of the user's console (still in Ray's log files), by what they say:
QUIET_RAY_LINES = (
    # Ray 2.60's Train controller, at every start: its PreemptionWatcher actor has restarts but
    # its constructor arguments live in the object store (ray-project/ray#53727); nothing to act on
    r"Actor with class name: 'PreemptionWatcher' .* has constructor arguments in the object store",
)


def quiet_ray_console() -> None:
    """Skip :data:`QUIET_RAY_LINES` among the worker lines Ray forwards to this driver (the
    driver's log deduplicator; what ``RAY_DEDUP_LOGS_SKIP_REGEX`` sets, joined to it)."""
    import re

    try:
        from ray._private import ray_logging
    except ImportError:  # an internal module: nothing to quiet if it moved
        return
    mine = "|".join(QUIET_RAY_LINES)
    for dedup in (ray_logging.stdout_deduplicator, ray_logging.stderr_deduplicator):
        theirs = getattr(dedup, "skip_re", None)
        if theirs is not None and mine in theirs.pattern:
            continue
        dedup.skip_re = re.compile(mine if theirs is None else f"{theirs.pattern}|{mine}")


def stale_ray_address(address: str | None, *, timeout: float = 2.0) -> bool:
    """Whether ``address`` (``host:port`` from Ray's ``ray_current_cluster`` file) names a
    head node nothing listens on: a ``ray start`` cluster that ended without ``ray stop``.
    ``ray.init()`` would otherwise retry it for many minutes."""
    if not address:
        return False
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return False
    except ValueError:
        return False  # not host:port: leave it to Ray to report
    except OSError:
        return True


def start_ray() -> None:
    """``ray.init()`` with no address: a submitted job joins its cluster, a plain run joins
    the cluster ``ray start`` left on this machine or starts a local one. When that
    cluster's head is gone (its address file outlived it), say so and start a local one.
    Workers import this project as installed (``make venv`` installs it editable; a Ray
    job's ``--working-dir`` puts it on the workers' path)."""
    import ray
    from ray._private.utils import get_ray_address_file, read_ray_address

    address, recorded, env = None, read_ray_address(), os.environ.get("RAY_ADDRESS")
    if not env and stale_ray_address(recorded):
        print(
            f"warning: {get_ray_address_file(None)} names the Ray cluster {recorded}, but nothing answers "
            "there (a `ray start` cluster stopped without `ray stop`); starting a local one",
            file=sys.stderr,
        )
        address = "local"
    elif env and env != "local":
        print(f"ray: joining the cluster at {env} (RAY_ADDRESS)", flush=True)
    elif not env and recorded:
        print(
            f"ray: joining the cluster at {recorded}, which `ray start` left running on this machine "
            f"({get_ray_address_file(None)}); RAY_ADDRESS=local runs on a Ray instance of this run's own",
            flush=True,
        )
    quiet_ray_console()
    ray.init(address=address)
