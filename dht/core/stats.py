"""A node's event counters, by name (what ``DHT.stats()`` reports)."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Stats:
    """Thread-safe event counters, by name.

    ``alarm``, when set, is called with each ``drop-*`` key and its
    increment, outside the lock, on the thread that counted it (the node
    sets a ``nodelog.Bursts``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self.alarm: Callable[[str, int], None] | None = None

    def incr(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n
        alarm = self.alarm
        if alarm is not None and name.startswith("drop-"):
            alarm(name, n)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
