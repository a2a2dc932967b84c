"""Errors the command line reports as one clear line and a non-zero exit."""

KEPT = "what was complete is kept: rerun the same command to resume"  # prepare.py's case; train.py names its checkpoint
INTERRUPTED = f"interrupted ({KEPT})"  # Ctrl-C, exit 130
TERMINATED = f"terminated (SIGTERM; {KEPT})"  # exit 143


class Terminated(KeyboardInterrupt):
    """SIGTERM (Kubernetes, Slurm, ``ray job stop``), raised like Ctrl-C so that it unwinds the same way."""


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


class LabelMismatchError(ShardError):
    """A training shard's label disagrees with the label table (the one source of given labels)."""


class CheckpointError(PipelineError):
    """A checkpoint that cannot be read, or was written by a run of another model or data."""


class DiskFullError(PipelineError):
    """A write ran out of space; the message names the path (and the space needed where known)."""


class DivergedError(PipelineError):
    """Training met a non-finite loss or parameters; the message names the epoch, step and quantity."""
