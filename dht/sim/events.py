"""The event queue: timers and datagram deliveries on virtual time.

One heap orders everything that will happen, by due time (virtual
seconds) and then by the order it was scheduled, so a run is the same
every time. It is the engines' ``Timers`` (``schedule(delay, callback)``,
``cancel(handle)``) and the network's delivery queue (``post``).

Cancelling is O(1): the entry stays in the heap, emptied, and is skipped
when it comes up; when emptied entries outnumber live ones the heap is
rebuilt without them (a request's timeout is scheduled for every request
and nearly always cancelled, so most timers end that way).

Each entry also carries a *context*: whatever ``context`` was when it was
scheduled, restored while it runs. The simulator's lookup tracing
(``trace``) uses it to follow the work one lookup causes through the
timers the engine sets for it; ``post`` (deliveries) carries none.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

from .clock import VirtualClock

Entry = list[Any]
"""``[due, seq, function or None once cancelled, args, context]``."""

_NO_ARGS: tuple[()] = ()
COMPACT_AT = 4096
"""Entries in the heap below which emptied ones are never swept out."""


class EventQueue:
    """What will happen, in order. Not thread-safe (nothing here uses threads)."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.context: object | None = None
        """Carried by entries scheduled now; set again while each one runs."""
        self.processed = 0
        """Entries run (cancelled ones not counted)."""
        self._heap: list[Entry] = []
        self._seq = 0
        self._cancelled = 0  # emptied entries still in the heap

    # -- the engines' Timers ----------------------------------------------------

    def schedule(self, delay: float, callback: Callable[[], None]) -> Entry:
        """Run ``callback()`` ``delay`` seconds from now; returns its handle."""
        self._seq += 1
        entry = [self.clock.now + delay, self._seq, callback, _NO_ARGS, self.context]
        heapq.heappush(self._heap, entry)
        return entry

    def cancel(self, handle: object) -> None:
        """Forget a scheduled callback (a handle that ran or was cancelled
        already, or None, is ignored)."""
        if type(handle) is list and handle[2] is not None:
            handle[2] = None
            handle[3] = _NO_ARGS
            handle[4] = None
            self._cancelled += 1
            heap = self._heap
            if self._cancelled * 2 > len(heap) > COMPACT_AT:
                self._heap = [entry for entry in heap if entry[2] is not None]
                heapq.heapify(self._heap)
                self._cancelled = 0

    # -- deliveries ---------------------------------------------------------------

    def post(self, due: float, function: Callable[..., object], *args: object) -> None:
        """Run ``function(*args)`` at virtual time ``due`` (no context, no handle)."""
        self._seq += 1
        heapq.heappush(self._heap, [due, self._seq, function, args, None])

    # -- running ------------------------------------------------------------------

    def __len__(self) -> int:
        """Entries waiting, cancelled ones included until they are swept."""
        return len(self._heap)

    def next_due(self) -> float | None:
        """When the next entry is due (perhaps a cancelled one), or None."""
        return self._heap[0][0] if self._heap else None

    def step(self) -> bool:
        """Take the next entry, move the clock to its due time (never back)
        and run it unless it was cancelled. False if nothing is left."""
        heap = self._heap
        if not heap:
            return False
        entry = heapq.heappop(heap)
        clock = self.clock
        if entry[0] > clock.now:
            clock.now = entry[0]
        function = entry[2]
        if function is None:
            self._cancelled -= 1
            return True
        entry[2] = None  # ran: a later cancel of its handle does nothing
        self.context = entry[4]
        try:
            function(*entry[3])
        finally:
            self.context = None
        self.processed += 1
        return True

    def run(self, until: float) -> None:
        """Run every entry due at or before ``until``, then set the clock to
        ``until`` (if it is not past it already)."""
        heap = self._heap
        pop = heapq.heappop
        clock = self.clock
        processed = 0
        try:
            while heap and heap[0][0] <= until:
                entry = pop(heap)
                function = entry[2]
                if function is None:
                    self._cancelled -= 1
                    continue
                entry[2] = None
                if entry[0] > clock.now:
                    clock.now = entry[0]
                self.context = entry[4]
                function(*entry[3])
                processed += 1
                heap = self._heap  # a cancel may have rebuilt it
        finally:
            self.context = None
            self.processed += processed
        if until > clock.now:
            clock.now = until
