"""Train a classifier with MSLC on noisy labels and export the purified labels.

    python pipeline/train.py [--config PRESET_OR_FILE] [key=value ...]
    ray job submit -- python pipeline/train.py --config smoke

Writes shards if they are missing, then runs a Ray Train ``TorchTrainer``
(``ray.init()`` with no address: a submitted job joins its cluster, a plain run
starts a local one). Outputs land in ``run.storage_path/run.name``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.training.cli import parse_args, run_cli
from pipeline.training.config import Config
from pipeline.training.launch import build_trainer, check_data, name_run, start_ray


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
