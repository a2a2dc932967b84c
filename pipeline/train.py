"""Train a classifier with MSLC on noisy labels and export the purified labels.

    python pipeline/train.py [--config PRESET_OR_FILE] [key=value ...]
    ray job submit -- python pipeline/train.py --config smoke

Writes shards if they are missing, then runs a Ray Train ``TorchTrainer``
(``ray.init()`` with no address: a submitted job joins its cluster, a plain run
starts a local one). Outputs land in ``run.storage_path/run.name``.
"""

from __future__ import annotations

import signal
import sys
import time

from pipeline.errors import ConfigError, PipelineError
from pipeline.rundir import RunDir
from pipeline.storage import NO_SPACE, disk_full_error
from pipeline.training.settings.cli import parse_args, raise_terminated, run_cli
from pipeline.training.settings.config import Config


def known_error(e: BaseException, *, storage: str = "run.storage_path") -> BaseException | None:
    """The first :class:`PipelineError` or :class:`ConfigError` behind ``e`` (a full disk
    becomes a :class:`~pipeline.errors.DiskFullError`): through
    ``__cause__`` / ``__context__``, Ray Train's ``worker_failures`` (by rank) and
    ``controller_failure``, and Ray's wrapped ``cause``; None when there is none."""
    seen, todo = set(), [e]
    while todo:
        x = todo.pop(0)
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, (PipelineError, ConfigError)):
            return x
        if isinstance(x, OSError) and x.errno in NO_SPACE:  # a full disk met by Ray's checkpoint copy, say
            return disk_full_error(x.filename or storage)
        failures = getattr(x, "worker_failures", None) or {}
        todo += [failures[r] for r in sorted(failures)]
        todo += [getattr(x, "controller_failure", None), getattr(x, "cause", None), x.__cause__, x.__context__]
    return None


def first_line(e: BaseException) -> str:
    """An exception's message without the traceback text Ray appends to it."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def resume_hint(run_dir: RunDir) -> str:
    """What an interrupted run kept and how to go on from it."""
    found = run_dir.checkpoints()
    if not found:
        return "no checkpoint was complete yet: rerun the command with another run.name"
    return f"its checkpoints are kept: go on with run.resume_from={found[-1]} and another run.name"


def outcome_lines(run_dir: RunDir, *, seconds: float) -> list[str]:
    """What the run found and what a person does next, from its files (no true label needed)."""
    import json

    m = json.loads(run_dir.metrics.read_text())
    labels = m["summary"]["labels"]
    epochs = labels["epochs"]
    val = max(e["val_acc"] or 0.0 for e in m["epochs"] if e["epoch"] in epochs)
    lines = [f"done in {seconds / 60:.1f} min; exported: {labels['selected_by']} ({100 * val:.2f}%)"]
    if run_dir.budget.is_file():
        b = json.loads(run_dir.budget.read_text())
        total = b["samples"]
        flags, prec, low = b["rows"][0]["flags"], b.get("relabel_precision"), b.get("relabel_lower")
        lines.append(
            f"flags: {flags} of {total} labels ({100 * flags / max(total, 1):.1f}%) differ from the given "
            f"ones; estimated {100 * b['rows'][0]['precision']:.1f}% of them right (no true labels used)"
            if flags
            else f"flags: none of {total} labels differs from the given ones"
        )
        if flags and not b["relabel_rows"]:
            lines.append(empty_relabel_line(b))
        else:
            lines.append(
                f"next: review relabel.csv ({b['relabel_rows']} flags with confidence >= "
                f"{b['relabel_threshold']:.2f}, estimated {'-' if prec is None else f'{100 * prec:.1f}%'} right"
                f"{'' if low is None else f' (95% lower bound {100 * low:.1f}%)'}; "
                "review_budget.json gives every cut), then pipeline/prepare.py --labels relabel.csv for a "
                "second round"
            )
    return lines


def empty_relabel_line(budget: dict) -> str:
    """What to do when there are flags but ``relabel.csv`` keeps none: the user's cut
    (``run.relabel_threshold``) is above them all, or no cut's flags were estimated right
    often enough; then it names the best cut."""
    if budget["relabel_threshold"] != budget["threshold"]:
        return (
            f"next: relabel.csv is empty: no flag has confidence >= {budget['relabel_threshold']:.2f} "
            "(run.relabel_threshold); review_budget.json gives every cut's estimate"
        )
    key = "lower" if "lower" in budget["rows"][0] else "precision"
    best = max((r for r in budget["rows"] if r["flags"]), key=lambda r: r[key])
    bound = f", 95% lower bound {100 * best['lower']:.1f}%" if key == "lower" else ""
    return (
        f"next: relabel.csv is empty: no cut's flags are estimated >= {100 * budget['target']:.0f}% right"
        f"{' with 95% confidence' if key == 'lower' else ''} (the best, confidence >= {best['threshold']:.2f}: "
        f"{best['flags']} flags, estimated {100 * best['precision']:.1f}% right{bound}); review the report's "
        "galleries, or write a cut of your own with pipeline/report.py RUN_DIR --threshold T --relabel-out FILE "
        "(review_budget.json gives every cut's estimate)"
    )


def main_body(cfg: Config) -> int:
    # the runtime (torch, Ray) loads only once the config is valid: --help and a bad key answer at once
    from pipeline.prep.job import ensure_shards
    from pipeline.training.run.launch import build_trainer, check_data, check_gpu_nodes, name_run, start_ray
    from pipeline.worker import train_loop_per_worker

    t0 = time.time()
    cfg = name_run(cfg)
    run_dir = RunDir.of(cfg.run.storage_path, cfg.run.name)
    print(f"run directory: {run_dir}", flush=True)
    check_data(cfg, ensure_shards(cfg.data))
    start_ray()
    signal.signal(signal.SIGTERM, raise_terminated)  # ray.init installed its own (a stack dump and exit 134)
    trainer = build_trainer(cfg, worker=train_loop_per_worker)
    if trainer.scaling_config.use_gpu:
        check_gpu_nodes()
    try:
        trainer.fit()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: stop the workers (the last whole checkpoint stays), then say so
        import ray

        ray.shutdown()
        raise KeyboardInterrupt(resume_hint(run_dir)) from None
    except Exception as e:  # the workers' error, already printed by Ray with its traceback
        known = known_error(e, storage=cfg.run.storage_path)
        import ray

        ray.shutdown()  # flushes the workers' forwarded logs now, so that the line below comes last
        if known is not None:  # bad data, divergence: the worker's one-line message, last on stderr
            print(f"error: {first_line(known)}", file=sys.stderr, flush=True)
            return 2
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        print(f"error: training failed: {type(cause).__name__}: {first_line(cause)}", file=sys.stderr)
        return 1
    import ray

    ray.shutdown()  # the workers' last forwarded lines come now, before the summary, not after it
    sys.stderr.flush()
    print()
    for line in outcome_lines(run_dir, seconds=time.time() - t0):
        print(line)
    print(f"\nrun directory:     {run_dir}")
    print(f"model:             {run_dir.model}")
    print(f"tensorboard logs:  {run_dir.tensorboard}   (tensorboard --logdir {run_dir.tensorboard})")
    print(f"corrected labels:  {run_dir.labels}")
    print(f"metrics:           {run_dir.metrics}")
    print(f"relabel file:      {run_dir.relabel}   (review it; pipeline/prepare.py --labels for a second round)")
    if cfg.run.report and run_dir.report.is_file():
        print(f"review report:     {run_dir.report}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: parse_args(argv, prog="pipeline/train.py", doc=__doc__), main_body)


if __name__ == "__main__":
    sys.exit(main())
