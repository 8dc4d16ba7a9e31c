"""A node's event counters, by name (what ``DHT.stats()`` reports)."""

from __future__ import annotations

import threading


class Stats:
    """Thread-safe event counters, by name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def incr(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
