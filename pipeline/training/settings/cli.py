"""The shared command line: ``[--config PRESET_OR_FILE] [key=value ...]``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable

from pipeline.errors import INTERRUPTED, KEPT, TERMINATED, PipelineError, Terminated
from pipeline.storage import NO_SPACE, disk_full_error
from pipeline.training.settings.config import LEARNED, Config, ConfigError, apply_overrides, merge
from pipeline.training.settings.methods import METHODS, SECTIONS, summary
from pipeline.training.settings.presets import DEFAULT_PRESET, PRESETS

PATH_KEYS = (
    ("data", "raw_dir"),
    ("data", "shard_root"),
    ("data", "shards"),
    ("data", "labels_file"),
    ("data", "clean_list"),
    ("data", "test_list"),
    ("run", "storage_path"),
    ("run", "resume_from"),
)


def load_config(preset_or_file: str | None, overrides: list[str] = ()) -> Config:
    """A preset name or a JSON file (a full or partial config dict), then overrides."""
    name = preset_or_file or DEFAULT_PRESET
    if name in PRESETS:
        cfg = PRESETS[name]()
    elif os.path.isfile(name):
        try:
            with open(name) as f:
                raw = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {name}: not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise ConfigError(
                f"config file {name}: the top level must be a JSON object of sections "
                f'(e.g. {{"optim": {{"epochs": 4}}}}), got {type(raw).__name__}'
            )
        base = PRESETS[raw.get("preset", DEFAULT_PRESET)]() if raw.get("preset") in PRESETS else Config()
        try:
            cfg = Config.from_dict(merge(base.to_dict(), raw))
        except ConfigError as e:
            raise ConfigError(f"config file {name}: {e}") from None
    else:
        raise ConfigError(f"unknown preset or missing config file {name!r}; presets: {', '.join(PRESETS)}")
    return apply_overrides(cfg, list(overrides))


def _key_table() -> str:
    lines = ["presets:"]
    for name, fn in PRESETS.items():
        lines.append(f"  {name:<15} {(fn.__doc__ or '').strip().splitlines()[0]}")
    lines.append("\nmethods (meta.method=NAME):")
    width = max(map(len, METHODS)) + 1
    for name, entry in METHODS.items():
        lines.append(f"  {name:<{width}} {summary(entry)}")
    lines.append(f"\nkeys (section.key=value; defaults of the {DEFAULT_PRESET} preset):")
    default = PRESETS[DEFAULT_PRESET]().to_dict()
    readers = {}
    for name, entry in METHODS.items():
        if getattr(entry, "section", None):
            readers.setdefault(entry.section, []).append(name)
    for section, values in default.items():
        if not isinstance(values, dict):
            continue
        if section in SECTIONS:
            lines.append(f"  {section}.* (read by meta.method={'|'.join(readers.get(section, [section]))}):")
        for k, v in values.items():
            lines.append(f"  {section}.{k} = {LEARNED if v is None else v}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None, *, prog: str, doc: str | None) -> Config:
    """Parse the command line into a validated config with absolute paths."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(doc or "").strip().splitlines()[0] if doc else None,
        epilog=_key_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", default=DEFAULT_PRESET, help="a preset name or a JSON config file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.epochs=3")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    return absolutize(cfg)


def in_ray_job_working_dir(cwd: str | None = None) -> bool:
    """Whether we run in the copy of ``--working-dir`` a Ray job unpacks (deleted with the session)."""
    parts = (cwd or os.getcwd()).split(os.sep)
    return "runtime_resources" in parts and "working_dir_files" in parts


def path_base() -> str:
    """What relative paths resolve against: the current directory, or in a Ray job's
    temporary working directory ``$MSLC_HOME`` (default ``~/mslc``) on the node running the
    driver, so that shards and outputs outlive the job."""
    if in_ray_job_working_dir():
        return os.path.expanduser(os.environ.get("MSLC_HOME", "~/mslc"))
    return os.getcwd()


def absolutize(cfg: Config) -> Config:
    """Make path keys absolute (see :func:`path_base`), keeping URLs as they are."""
    d = cfg.to_dict()
    base = path_base()
    for section, key in PATH_KEYS:
        v = d[section][key]
        if v and "://" not in v:
            d[section][key] = os.path.normpath(os.path.join(base, os.path.expanduser(v)))
    return Config.from_dict(d)


SIGNALLED: set[int] = (
    set()
)  # SIGTERM, once received (a library may re-raise our Terminated as a plain KeyboardInterrupt)


def raise_terminated(signum, frame) -> None:
    SIGNALLED.add(signum)
    raise Terminated()


def run_cli(parse: Callable[[], Config], body: Callable[[Config], int]) -> int:
    """Run ``body(parse())``; a bad config or bad data is one ``error:`` line and exit 2 (a
    full disk too, wherever it is met), Ctrl-C one line and exit 130, SIGTERM one line and
    exit 143. What was written whole is kept in every case (files appear complete or not at all)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, raise_terminated)
    try:
        return body(parse())
    except (ConfigError, PipelineError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # its argument, where the body gave one, says what was kept and how to go on
        term = isinstance(e, Terminated) or signal.SIGTERM in SIGNALLED
        kept = e.args[0] if e.args and isinstance(e.args[0], str) else None
        line = TERMINATED if term else INTERRUPTED
        print(line if kept is None else line.replace(KEPT, kept), file=sys.stderr)
        return 143 if term else 130
    except OSError as e:
        if e.errno not in NO_SPACE:
            raise
        print(f"error: {disk_full_error(e.filename or os.getcwd())}", file=sys.stderr)
        return 2
