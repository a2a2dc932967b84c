"""The driver's side of a run: name it, check (or write) its shards, and build the Ray
Train ``TorchTrainer`` that runs :func:`pipeline.training.loop.train_loop_per_worker`."""

from __future__ import annotations

import dataclasses
import secrets
import time
from pathlib import Path

from pipeline import shardset
from pipeline.prep.job import ensure_shards
from pipeline.training.config import Config, ConfigError, replace
from pipeline.training.state import build_transforms


def name_run(cfg: Config) -> Config:
    """Give the run a unique name unless one was set; refuse to reuse an existing run dir."""
    name = cfg.run.name or f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    run_dir = Path(cfg.run.storage_path) / name
    if (run_dir / "metrics.json").exists():
        raise ConfigError(f"run.name={name!r}: {run_dir} already holds a run; choose another name")
    return replace(cfg, run=dataclasses.replace(cfg.run, name=name))


def check_data(cfg: Config) -> None:
    """Write shards if missing (``data.shards`` unset), then check them, the label table
    and the transform before any worker starts."""
    shard_dir = ensure_shards(cfg.data)
    manifest = shardset.load_manifest(shard_dir)
    if manifest.get("dataset") != cfg.data.dataset:
        raise ConfigError(f"{shard_dir} holds {manifest.get('dataset')} shards but data.dataset={cfg.data.dataset}; "
                          f"use --config {manifest.get('dataset')} or set data.dataset")
    shardset.verify(shard_dir, manifest, level=cfg.data.verify)
    shardset.read_labels_table(shard_dir, manifest)
    build_transforms(cfg, manifest)


def build_trainer(cfg: Config, *, callbacks: list | None = None):
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig as RayRunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.training.loop import train_loop_per_worker

    if cfg.scale.use_gpu == "auto":
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    else:
        use_gpu = cfg.scale.use_gpu == "true"
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=cfg.to_dict(),
        scaling_config=ScalingConfig(
            num_workers=cfg.scale.workers, use_gpu=use_gpu,
            resources_per_worker={"CPU": cfg.scale.cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
        ),
        run_config=RayRunConfig(
            name=cfg.run.name, storage_path=cfg.run.storage_path,
            failure_config=FailureConfig(max_failures=cfg.scale.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints or None),  # Ray keeps the latest
            callbacks=callbacks or None,
        ),
    )


def start_ray() -> None:
    """``ray.init()`` with no address. Workers import this project as installed (``make venv``
    installs it editable; a Ray job's ``--working-dir`` puts it on the workers' path)."""
    import ray

    ray.init()
