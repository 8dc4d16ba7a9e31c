"""Periodic maintenance: what a node does every ``maintenance_interval``.

Each round: drop the contacts that failed many times in a row
(``RoutingTable.forget_gone``); ping the suspect ones, less often the
longer they stay silent (an answer makes them live again), and those not
heard from for ``liveness_interval``: a node lists its contacts in its
answers, and each dead one listed costs the asker a wait (with pings only
where replacements waited for room, the K-closest lookups of a simulated
network two hours into 1 h sessions took 2.4 s at the median instead of
1.4 s); ping the candidates waiting for room (``verification``); queue
key transfer for live contacts never served
(the queue was full when they were new); sweep expired values out of the
storage, on the background thread (a user's storage may be slow); then the
``tasks`` with their own intervals: bucket refresh (``refresh``),
republishing (``republish``) and replication (``replication``).
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Sequence

from ..errors import ClosedError
from ..wire.events import EventType
from .callbacks import ignore
from .context import Context
from .routing import SUSPECT_AFTER_FAILURES
from .transfer import KeyTransfer
from .verification import Verifier


class Maintenance:
    """One node's periodic work, on the timer thread."""

    def __init__(
        self,
        context: Context,
        *,
        verifier: Verifier,
        transfer: KeyTransfer,
        tasks: Sequence[Callable[[float], None]] = (),
    ) -> None:
        self._context = context
        self._verifier = verifier
        self._transfer = transfer
        self._tasks = tasks
        """Run each round with the time; each keeps its own interval."""
        self.interval = context.schedule.maintenance_interval
        """Seconds between two rounds."""
        self._lock = threading.Lock()  # guards the three below
        self._timer: object = None
        self._sweep_queued = False
        self._stopped = False

    def start(self) -> None:
        with self._lock:
            if not self._stopped:
                self._timer = self._context.timers.schedule(self.interval, self.run)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            timer, self._timer = self._timer, None
        if timer is not None:
            self._context.timers.cancel(timer)

    def run(self) -> None:
        """One round (the timer calls it; tests may too)."""
        context = self._context
        if context.requests.closed:
            return
        now = context.clock()
        table = context.table
        stale = table.stale(now, context.schedule.liveness_interval)
        for contact in stale:
            self._ping(contact.id, contact.address)
        pinged = {contact.id for contact in stale}
        schedule = context.schedule
        gone = table.forget_gone(now)
        if gone:
            context.stats.incr("contacts-dropped", gone)
        for contact in table.suspects():
            # Each unanswered ping doubles the wait for the next, up to
            # liveness_interval: a dead contact nothing replaces (a bucket
            # with room) is not pinged every round for ever.
            wait = self.interval * 2 ** min(contact.failures - SUSPECT_AFTER_FAILURES, 16)
            due = now - contact.last_seen >= min(wait, schedule.liveness_interval)
            if due and contact.id not in pinged:
                self._ping(contact.id, contact.address)
        for contact in context.table.candidates_to_verify():
            self._verifier.prove(contact.id, contact.address)
        served = self._transfer.served()
        for contact in context.table.contacts():
            if contact.id not in served and not contact.suspect:
                self._transfer.offer(contact.node)
        with self._lock:  # one sweep queued at a time, whatever the worker's backlog
            sweep = not self._sweep_queued
            self._sweep_queued = True
        if sweep:
            context.background(_weakly(self._sweep))
        for task in self._tasks:
            task(now)
        self.start()

    def _sweep(self) -> None:
        """Background thread: the storage's expiry sweep (a user's may be
        slow; guarded: a raise must not end the maintenance)."""
        with self._lock:
            self._sweep_queued = False
            if self._stopped:
                return
        self._context.storage.expire()

    def _ping(self, node_id: bytes, address: tuple[str, int]) -> None:
        with contextlib.suppress(ClosedError):
            self._context.requests.request(address, node_id, EventType.PING, None, ignore, ignore)


def _weakly(method: Callable[[], None]) -> Callable[[], None]:
    """``method``, called only if its object still exists: a job waiting on
    the worker must not keep a closed node alive."""
    ref = weakref.WeakMethod(method)

    def call() -> None:
        bound = ref()
        if bound is not None:
            bound()

    return call
