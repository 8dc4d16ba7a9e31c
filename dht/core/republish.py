"""Republishing: a value stored through ``Store`` is stored again on the
then K closest nodes every ``republish_interval`` (or half its remaining
life, when that is shorter) until it expires (the Kademlia paper, 2.5).

Nodes leave; without it a value lived only on the nodes that took it at
``Store`` time. Each copy carries the original ``created`` and ``ttl``, so
every node of ours expires it at the same instant as the first copy:
republishing never extends a value's life (a Go node restarts the lifetime
of whatever it receives, D34, and forgets it within a minute anyway, D36).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial

from ..wire.events import NS_PER_SECOND, Value
from .context import Context
from .operations import StoreOperation
from .slots import Slots

LAST_REPUBLISH = 60.0
"""Seconds of life a value must have left to be republished: halving the
interval towards the expiry would otherwise republish ever more often."""
REPUBLISHING_AT_ONCE = 8
"""Republishing Stores one node runs at once; the rest wait their turn."""


class Publications:
    """The values this node published and when each is due again; bounded to
    ``max_bytes`` of values (the oldest publications beyond it are dropped,
    and counted). Times: ``now`` seconds on the node's clock, ``now_ns``
    nanoseconds since the epoch. Any thread."""

    def __init__(self, interval: float, max_bytes: int) -> None:
        self.interval = interval
        self.max_bytes = max_bytes
        self._lock = threading.Lock()  # guards the two below
        self._due: dict[tuple[bytes, bytes], tuple[Value, float]] = {}
        self._bytes = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._due)

    def _next(self, value: Value, now: float, now_ns: int) -> float | None:
        """When ``value`` is due next; None once too near its end."""
        left = (value.created_ns + value.ttl_ns - now_ns) / NS_PER_SECOND
        if left < LAST_REPUBLISH:
            return None
        return now + min(self.interval, left / 2)

    def add(self, value: Value, now: float, now_ns: int) -> int:
        """Publish ``value`` (again: a new copy replaces the old); how many
        older publications were dropped to make room."""
        due = self._next(value, now, now_ns)
        identity = (value.key, value.value)
        dropped = 0
        with self._lock:
            old = self._due.pop(identity, None)
            if old is not None:
                self._bytes -= len(old[0].value)
            if due is None:
                return 0
            self._due[identity] = (value, due)
            self._bytes += len(value.value)
            while self._bytes > self.max_bytes and len(self._due) > 1:
                oldest = next(iter(self._due))
                self._bytes -= len(self._due.pop(oldest)[0].value)
                dropped += 1
        return dropped

    def remove(self, key: bytes) -> int:
        """Stop republishing the values of ``key``; how many there were."""
        with self._lock:
            gone = [identity for identity in self._due if identity[0] == key]
            for identity in gone:
                self._bytes -= len(self._due.pop(identity)[0].value)
        return len(gone)

    def due(self, now: float, now_ns: int) -> list[Value]:
        """The values due at ``now``, each rescheduled (or dropped near its
        end). A scan of every publication, once a maintenance round."""
        out: list[Value] = []
        with self._lock:
            for identity, (value, when) in list(self._due.items()):
                if when > now:
                    continue
                following = self._next(value, now, now_ns)
                if following is None:  # expired, or too near its end to matter
                    del self._due[identity]
                    self._bytes -= len(value.value)
                else:
                    self._due[identity] = (value, following)
                    out.append(value)
        return out


class Republisher:
    """Stores the publications that are due again; ``run`` once per
    maintenance round."""

    def __init__(self, context: Context, publications: Publications) -> None:
        self._context = context
        self.publications = publications
        self.slots = Slots(REPUBLISHING_AT_ONCE)

    def run(self, now: float) -> None:
        context = self._context
        for value in self.publications.due(now, context.wall_clock_ns()):
            self.slots.submit(partial(self._store, value))

    def _store(self, value: Value, done: Callable[[], None]) -> None:
        stats = self._context.stats

        def stored(error: Exception | None) -> None:
            stats.incr("values-republished" if error is None else "republish-failed")
            done()

        StoreOperation(self._context, value, stored).start()

    def close(self) -> None:
        self.slots.close()
