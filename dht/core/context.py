"""What a node's operations and key transfer use of it: its parts.

Operations (``operations``) and the key transfer (``transfer``) get this
small record of the node's parts, not the engine that assembles them, so
they read alone and import nothing above them. ``Running`` is the set of
operations in progress, which ``Close`` ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .diversity import Diversity
from .keeper import Keeper
from .limits import Limits
from .requests import PendingRequests
from .routing import RoutingTable
from .schedule import Schedule
from .stats import Stats
from .storage import GuardedStorage
from .timerwheel import Timers


class Endable(Protocol):
    def finish(self, error: Exception | None) -> None: ...


class Running:
    """The operations in progress (any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # A dict, not a set: Close ends them in the order they began, the
        # same in every run (a simulation's seed must replay it exactly).
        self._operations: dict[Endable, None] = {}
        self.closed = False

    def __len__(self) -> int:
        with self._lock:
            return len(self._operations)

    def add(self, operation: Endable) -> bool:
        """Add a running operation; False once closed."""
        with self._lock:
            if self.closed:
                return False
            self._operations[operation] = None
            return True

    def discard(self, operation: Endable) -> None:
        with self._lock:
            self._operations.pop(operation, None)

    def close(self, error: Exception) -> None:
        """End every running operation with ``error``, on the calling thread."""
        with self._lock:
            self.closed = True
            operations = list(self._operations)
            self._operations.clear()
        for operation in operations:
            operation.finish(error)


@dataclass(eq=False)
class Context:
    """A node's parts, as its operations and key transfer see them."""

    local_id: bytes
    table: RoutingTable
    diversity: Diversity
    requests: PendingRequests
    keeper: Keeper
    storage: GuardedStorage
    """The user's storage, guarded (key transfer iterates it)."""
    stats: Stats
    timers: Timers
    limits: Limits
    running: Running
    clock: Callable[[], float]
    """Seconds on a monotonic clock: what timeouts are measured on."""
    wall_clock_ns: Callable[[], int]
    """Nanoseconds since the Unix epoch: what values' times are read against."""
    background: Callable[[Callable[[], None]], None]
    """Runs a job that may block for long (a scan of the user's storage)
    later, off the timer thread: the shell's worker thread."""
    new_id: Callable[[], bytes]
    """20 random bytes (the engine's id source: random ids to refresh with)."""
    schedule: Schedule
    """How often the node does its periodic work."""
