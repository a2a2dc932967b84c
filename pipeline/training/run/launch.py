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


def cluster_view() -> tuple[dict, dict | None]:
    """``(resources now, the most its autoscaler can provide or None)`` of the connected cluster."""
    import ray

    try:
        from ray._private.state import state

        can_add = state.get_max_resources_from_cluster_config()
    except Exception:  # an internal API: without it, fall back to what the cluster has now
        can_add = None
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
    ray.init(address=address)
