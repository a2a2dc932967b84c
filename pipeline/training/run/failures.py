"""Failures contained across ranks: an exception on any rank stops every rank within seconds.

Ranks meet in collectives, and a rank that raises (a transform error, an ``OSError`` from
fsspec, bad data) leaves the others blocked in the next one until the backend's timeout
(half an hour by default) while they hold their GPUs. :class:`FailureWatch` closes that gap
through the process group's rendezvous store, which every rank can reach without a
collective: a rank whose training raises writes its error there first (the first writer
wins), and a thread on every rank polls the store and ends its process with exit status 1
once another rank's error is there, after printing it. Under Ray Train the failing rank's
exception is the worker group's error; the others' exits follow it.
"""

from __future__ import annotations

import os
import sys
import threading

import torch.distributed as tdist

from mslc import dist

KEY = "mslc/first-failure"
POLL_S = 0.5


def _store():
    try:
        return tdist.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError):  # a private API: without it, no watch
        return None


class FailureWatch:
    """A context around a rank's training (no-op at world size 1)."""

    def __init__(self, *, poll_s: float = POLL_S) -> None:
        self.poll_s, self.store, self.thread = poll_s, None, None
        self.stop = threading.Event()

    def __enter__(self) -> "FailureWatch":
        if dist.is_distributed():
            self.store, self.rank = _store(), dist.rank()
        if self.store is not None:
            self.thread = threading.Thread(target=self._watch, name="mslc-failure-watch", daemon=True)
            self.thread.start()
        return self

    def _watch(self) -> None:
        me = f"rank {self.rank} "
        while not self.stop.wait(self.poll_s):
            try:
                if not self.store.check([KEY]):
                    continue
                message = self.store.get(KEY).decode(errors="replace")
            except Exception:  # the store is gone (its host finished or died): nothing more to watch
                return
            if message.startswith(me) or self.stop.is_set():
                return
            sys.stdout.flush()
            print(f"rank {self.rank}: stopping, because {message}", file=sys.stderr, flush=True)
            os._exit(1)

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is not None and self.store is not None:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            message = f"rank {self.rank} failed: {type(exc).__name__}: {first}"[:2000]
            try:
                self.store.compare_set(KEY, "", message)  # the first failure stays
            except Exception:
                pass
        self.stop.set()
        return False
