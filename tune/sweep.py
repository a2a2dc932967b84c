"""Sweep MSLC's warm-up length and meta learning rates with Ray Tune.

    python tune/sweep.py --config PRESET [key=value ...] [--samples K] [--scheduler asha|fifo]
                         [--name NAME] [--resume]
    ray job submit --working-dir . -- python tune/sweep.py --config clothing1m ...

Each trial is a full ``pipeline/train.py`` run (a ``TorchTrainer`` inside a Tune function
trainable, its per-epoch metrics forwarded with ``TuneReportCallback``) with its own
TensorBoard logs, checkpoints and corrected labels under ``run.storage_path/NAME/runs/trial_ID``. Trials are compared, and ASHA
stops the weak ones, on the clean **validation** accuracy; the test accuracy is only
reported at each trial's best-validation epoch. As many trials run at once as the
cluster's GPUs (or CPUs) hold. At the end the best configurations are printed and written
to ``run.storage_path/NAME/best_configs.csv`` and ``.md``. ``--resume`` continues an
interrupted sweep of the same NAME.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
import sys
from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.training.settings.cli import absolutize, load_config, run_cli
from pipeline.training.settings.config import Config, apply_overrides, replace
from pipeline.training.settings.methods import METHODS

METRIC = "val_acc"
TUNE_METRIC = (
    "best_val_acc"  # each report's best val_acc so far: Tune's "current best trial" and ASHA rank as the table does
)
# config key a method may list as tunable → its search-space name (η1: the lr of MSLC's α_net or of
# MW-Net's weight net; η2: β_net's; the virtual step's lr scale)
SPACE_NAMES = {
    "meta.warmup_epochs": "warmup_epochs",
    "mslc.alpha_lr": "alpha_lr",
    "mslc.beta_lr": "beta_lr",
    "mslc.virtual_lr_scale": "virtual_lr_scale",
    "mwnet.lr": "alpha_lr",
    "mwnet.virtual_lr_scale": "virtual_lr_scale",
}


def swept(cfg: Config) -> dict[str, str]:
    """Search-space name → config key, for the keys the configured method lists as tunable."""
    return {SPACE_NAMES[key]: key for key in METHODS[cfg.meta.method].tunable if key in SPACE_NAMES}


def swept_names(cfg: Config) -> list[str]:
    """The search-space names the configured method reads (its ``tunable`` keys)."""
    return list(swept(cfg))


def warmup_choices(epochs: int) -> list[int]:
    """Warm-up lengths worth trying: 10%–60% of the schedule, at least 1, leaving MSLC epochs."""
    return sorted({min(epochs - 1, max(1, round(epochs * f))) for f in (0.1, 0.2, 0.4, 0.6)})


def build_space(cfg: Config) -> dict:
    """The Tune search space over the keys the configured method lists as tunable (:func:`swept`)."""
    from ray import tune

    space = {
        "warmup_epochs": tune.choice(warmup_choices(cfg.optim.epochs)),
        "alpha_lr": tune.loguniform(1e-4, 1e-2),  # η1
        "beta_lr": tune.loguniform(1e-4, 1e-2),  # η2
        "virtual_lr_scale": tune.choice([1.0, 3.0, 10.0]),
    }
    return {name: space[name] for name in swept_names(cfg)}


def trial_config(base: dict, params: dict, trial_name: str, runs_dir: str) -> Config:
    """The base config with a trial's swept values and its own run directory. Trials
    checkpoint at epoch ends only: every Ray Train report reaches Tune as an iteration,
    and ASHA's rungs count epochs."""
    cfg = Config.from_dict(base)
    cfg = apply_overrides(cfg, [f"{key}={params[name]}" for name, key in swept(cfg).items() if name in params])
    return replace(
        cfg,
        run=dataclasses.replace(
            cfg.run, storage_path=runs_dir, name=trial_name, checkpoint_every_steps=0, checkpoint_every_min=0.0
        ),
    )


def run_trial(params: dict) -> None:
    """Tune's function trainable: one TorchTrainer run, metrics forwarded to Tune each epoch."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipeline.training.run.launch import build_trainer
    from pipeline.worker import train_loop_per_worker

    cfg = trial_config(params["base"], params, f"trial_{tune.get_context().get_trial_id()}", params["runs_dir"])
    build_trainer(cfg, worker=train_loop_per_worker, callbacks=[TuneReportCallback()]).fit()


#: what a trial's own process (Tune's function trainable: it starts the trial's TorchTrainer and
#: waits) asks for: memory only, no CPU, so that it fits on a head that runs no work (our cluster
#: YAMLs' ``CPU: 0``) instead of taking a slice of a worker node that a trial's workers then miss
TRIAL_DRIVER_MEMORY = 512 * 2**20


def trial_resources(cfg: Config, view: tuple[dict, dict | None] | None = None) -> dict:
    """What one trial's Train workers take; the Tune trial itself takes no CPU (:data:`TRIAL_DRIVER_MEMORY`).
    ``view``: :func:`~pipeline.training.run.launch.cluster_view`'s, else asked for."""
    from pipeline.training.run.launch import cluster_view, resolve_use_gpu

    now, can_add = view or cluster_view()
    use_gpu = resolve_use_gpu(cfg.scale.use_gpu, now=now, can_add=can_add)
    w = cfg.scale.max_workers
    return {"CPU": w * cfg.scale.cpus_per_worker, "GPU": w if use_gpu else 0}


def concurrent_trials(cfg: Config) -> int:
    """As many trials as the cluster holds at once: what it has now or, on an autoscaling
    cluster, what its autoscaler can add (a cluster at zero workers would otherwise run one
    trial at a time)."""
    from pipeline.training.run.launch import cluster_view

    now, can_add = cluster_view()
    need = trial_resources(cfg, (now, can_add))
    have = {k: max(now.get(k, 0), (can_add or {}).get(k, 0)) for k in need}
    fits = [math.floor(have.get(k, 0) / v) for k, v in need.items() if v > 0]
    return max(1, min(fits)) if fits else 1


def build_tuner(cfg: Config, *, name: str, samples: int, scheduler: str, resume: bool):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    storage = cfg.run.storage_path
    runs_dir = os.path.join(storage, name, "runs")
    trainable = tune.with_resources(run_trial, {"memory": TRIAL_DRIVER_MEMORY})
    exp = os.path.join(storage, name)
    if resume:
        if not tune.Tuner.can_restore(exp):
            raise ConfigError(f"--resume: no sweep to resume at {exp}")
        return tune.Tuner.restore(exp, trainable=trainable, resume_unfinished=True, resume_errored=True)
    if scheduler == "asha":
        grace = max(warmup_choices(cfg.optim.epochs)) + 1
        # stop_last_trials=False: a trial that reaches the last epoch ends by itself (its labels, model
        # and review written, its Train controller's autoscaling request withdrawn) instead of being
        # killed at its last report, which left nodes held until Ray Train's request expired (3 min)
        sched = ASHAScheduler(
            time_attr="epoch",
            max_t=cfg.optim.epochs,
            grace_period=min(grace, cfg.optim.epochs),
            reduction_factor=2,
            stop_last_trials=False,
        )
    else:
        sched = FIFOScheduler()
    return tune.Tuner(
        trainable,
        param_space={"base": cfg.to_dict(), "runs_dir": runs_dir, **build_space(cfg)},
        tune_config=tune.TuneConfig(
            metric=TUNE_METRIC,
            mode="max",
            num_samples=samples,
            scheduler=sched,
            max_concurrent_trials=concurrent_trials(cfg),
        ),
        run_config=tune.RunConfig(name=name, storage_path=storage),
    )


def best_table(results) -> list[dict]:
    """One row per trial: its swept values, best validation accuracy and the epoch of it,
    the test accuracy at that epoch, epochs run; sorted by validation accuracy."""
    rows = []
    for r in results:
        df = r.metrics_dataframe
        if df is None or METRIC not in df or df[METRIC].isna().all():
            continue
        i = df[METRIC].idxmax()
        name = f"trial_{r.metrics['trial_id']}"
        rows.append(
            {
                "trial": name,
                **{k: r.config[k] for k in dict.fromkeys(SPACE_NAMES.values()) if k in r.config},
                "best_val_acc": float(df.loc[i, METRIC]),
                "epoch": int(df.loc[i, "epoch"]),
                "test_acc_at_best_val": float(df.loc[i, "test_acc"]),
                "epochs_run": int(df["epoch"].max()),
                "run_dir": os.path.join(r.config["runs_dir"], name),
            }
        )
    return sorted(rows, key=lambda row: -row["best_val_acc"])


def write_table(rows: list[dict], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    cols = list(rows[0]) if rows else ["trial"]
    with open(out / "best_configs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    md = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    md += "".join("| " + " | ".join(fmt(r[c]) for c in cols) + " |\n" for r in rows)
    (out / "best_configs.md").write_text(
        f"Sweep ranked by {METRIC} (clean validation); test accuracy "
        "is read at each trial's best-validation epoch, never used to rank.\n\n" + md
    )
    return md


def parse(argv: list[str] | None):
    p = argparse.ArgumentParser(
        prog="tune/sweep.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default="fmnist-sym40", help="a preset name or a JSON config file")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--samples", type=int, default=8, help="trials to run")
    p.add_argument("--scheduler", choices=("asha", "fifo"), default="asha")
    p.add_argument("--name", default="", help="the sweep's name (default: sweep-<preset>); reuse it with --resume")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep of this name")
    a = p.parse_args(argv)
    if a.samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {a.samples}")
    cfg = absolutize(load_config(a.config, a.overrides))
    for k in swept(cfg).values():
        if any(o.startswith(k + "=") for o in a.overrides):
            raise ConfigError(f"{k} is swept; do not also set it")
    if not swept_names(cfg):
        raise ConfigError(f"meta.method={cfg.meta.method} reads none of the swept keys ({', '.join(SPACE_NAMES)})")
    return cfg, a


def main(argv: list[str] | None = None) -> int:
    holder = {}

    def parse_cfg():
        holder["cfg"], holder["args"] = parse(argv)
        return holder["cfg"]

    def body(cfg: Config) -> int:
        from pipeline.prep.job import ensure_shards
        from pipeline.training.run.launch import check_data, check_gpu_nodes, start_ray

        a = holder["args"]
        name = a.name or f"sweep-{cfg.preset}"
        check_data(cfg, ensure_shards(cfg.data))
        start_ray()
        if trial_resources(cfg)["GPU"]:
            check_gpu_nodes()
        results = build_tuner(cfg, name=name, samples=a.samples, scheduler=a.scheduler, resume=a.resume).fit()
        rows = best_table(results)
        unfinished = len(results) - results.num_terminated
        if unfinished:
            print(
                f"{unfinished} of {len(results)} trials did not finish (interrupted or failed); continue with the "
                f"same command plus --resume --name {name}",
                file=sys.stderr,
            )
        if not rows:
            print("error: no trial reported a validation accuracy yet", file=sys.stderr)
            return 1
        out = Path(cfg.run.storage_path) / name
        print(write_table(rows, out))
        keys = swept(cfg)
        print(f"best configuration (by {METRIC}): " + " ".join(f"{keys[k]}={rows[0][k]}" for k in keys if k in rows[0]))
        print(f"tables: {out / 'best_configs.csv'}  {out / 'best_configs.md'}")
        return 0

    return run_cli(parse_cfg, body)


if __name__ == "__main__":
    sys.exit(main())
