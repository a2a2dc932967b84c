"""Train a classifier with MSLC on noisy labels and export the purified labels.

    python pipeline/train.py [--config PRESET_OR_FILE] [key=value ...]
    ray job submit -- python pipeline/train.py --config smoke

Writes shards if they are missing, then runs a Ray Train ``TorchTrainer``
(``ray.init()`` with no address: a submitted job joins its cluster, a plain run
starts a local one). Outputs land in ``run.storage_path/run.name``.
"""

from __future__ import annotations

import dataclasses
import secrets
import sys
import time
from pathlib import Path

from pipeline.cli import parse_args, run_cli
from pipeline.config import Config, ConfigError, replace
from pipeline.prepare import ensure_shards
from pipeline import shards


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
    from pipeline.state import build_transforms

    shard_dir = ensure_shards(cfg.data)
    manifest = shards.load_manifest(shard_dir)
    if manifest.get("dataset") != cfg.data.dataset:
        raise ConfigError(f"{shard_dir} holds {manifest.get('dataset')} shards but data.dataset={cfg.data.dataset}; "
                          f"use --config {manifest.get('dataset')} or set data.dataset")
    shards.verify(shard_dir, manifest, level=cfg.data.verify)
    shards.read_labels_table(shard_dir, manifest)
    build_transforms(cfg, manifest)


def build_trainer(cfg: Config, *, callbacks: list | None = None):
    import ray
    from ray.train import FailureConfig, RunConfig as RayRunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.worker import train_loop_per_worker

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
            callbacks=callbacks or None,
        ),
    )


def start_ray() -> None:
    """``ray.init()`` with no address. Workers import this project as installed (``make venv``
    installs it editable; a Ray job's ``--working-dir`` puts it on the workers' path)."""
    import ray

    ray.init()


def main_body(cfg: Config) -> int:
    cfg = name_run(cfg)
    print(f"run directory: {Path(cfg.run.storage_path) / cfg.run.name}", flush=True)
    check_data(cfg)
    start_ray()
    trainer = build_trainer(cfg)
    try:
        trainer.fit()
    except Exception as e:  # the workers' error, already printed by Ray with its traceback
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        print(f"error: training failed: {type(cause).__name__}: {cause}", file=sys.stderr)
        return 1
    run_dir = Path(cfg.run.storage_path) / cfg.run.name
    print(f"\nrun directory:     {run_dir}")
    print(f"model:             {run_dir / 'model.pt'}")
    print(f"tensorboard logs:  {run_dir / 'tensorboard'}   (tensorboard --logdir {run_dir / 'tensorboard'})")
    print(f"corrected labels:  {run_dir / 'corrected_labels.parquet'}")
    print(f"metrics:           {run_dir / 'metrics.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: parse_args(argv, prog="pipeline/train.py", doc=__doc__), main_body)


if __name__ == "__main__":
    sys.exit(main())
