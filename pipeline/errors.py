"""Errors the command line reports as one clear line and a non-zero exit."""


class PipelineError(Exception):
    """Bad data or state on disk; the message names the file, sample or field."""


class ShardError(PipelineError):
    """A shard is missing, corrupt, truncated, or holds a bad sample."""
