"""Errors the command line reports as one clear line and a non-zero exit."""

INTERRUPTED = "interrupted (what was complete is kept: rerun the same command to resume)"  # Ctrl-C, exit 130


class ConfigError(ValueError):
    """A bad config value or key; the message names it."""


def require(ok: bool, msg: str) -> None:
    """Raise :class:`ConfigError` with ``msg`` unless ``ok``."""
    if not ok:
        raise ConfigError(msg)


class PipelineError(Exception):
    """Bad data or state on disk; the message names the file, sample or field."""


class ShardError(PipelineError):
    """A shard is missing, corrupt, truncated, or holds a bad sample."""


class DivergedError(PipelineError):
    """Training met a non-finite loss or parameters; the message names the epoch, step and quantity."""
