"""Pinning a node's threads to CPUs (``Config.cpus``)."""

from __future__ import annotations

import os

from .core import nodelog

log = nodelog.logger("dht.affinity")


def pin_current_thread(cpus: frozenset[int] | None) -> None:
    """Restrict the calling thread to ``cpus`` (None: leave it alone). A
    failure is logged, not raised: the thread still works, unpinned."""
    if cpus:
        try:
            os.sched_setaffinity(0, cpus)  # 0: the calling thread, on Linux
        except OSError as error:
            log.warning("cannot pin thread to CPUs %s: %s", sorted(cpus), error)
