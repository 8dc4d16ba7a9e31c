"""``Shipper``: sends chosen values to nodes in paced STORE batches.

Key transfer (``transfer``) and replication (``replication``) each have
one. The batches for a node go one at a time: the next only once the node
acknowledged the last (a refusal of ``full``, or no answer, ends that
node's shipment), at least ``interval`` apart, within a budget of bytes per
second in all and a quarter of it per IP address (per address on a trusted
local network), for at most ``ACTIVE`` nodes at once, the next started
from the IP address with the fewest running, and never while half the
pending-request slots are taken. Newcomers cost an attacker one FIND_NODE
and one PONG each: 256 of them a wave made a node holding 20 MB send them
863 MiB, and fail its own Stores for want of pending-request slots.

Threading: ``ship`` on any thread (the worker's scans), batches go out from
the timer thread and listener threads (acknowledgements).
"""

from __future__ import annotations

import threading
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable
from functools import partial

from ..errors import ClosedError, StoreRefused
from ..wire.events import Address, Event, EventType, Node, Store, Value
from ..wire.sizes import batch_values
from .context import Context
from .ratelimit import TokenBuckets

ACTIVE = 8
"""Nodes being sent values at once."""
WAITING = 64
"""Nodes waiting for their turn, by default; more are skipped (``on_skipped``)."""
HOST_SHARE = 4
"""One IP address gets at most 1/HOST_SHARE of the rate."""


class _Shipment:
    """The batches chosen for one node, and how far their sending got."""

    __slots__ = ("batches", "next", "node")

    def __init__(self, node: Node, batches: list[tuple[Value, ...]]) -> None:
        self.node = node
        self.batches = batches
        self.next = 0


class Shipper:
    """Paced STORE batches to nodes. Counts ``acked`` (values acknowledged),
    ``<name>-bytes`` (bytes of values sent), ``<name>-paced`` (a batch
    waited for its budget), ``<name>-skipped`` (a node not served: too many
    waiting) and ``<name>-stopped`` (a node refused or did not answer) in
    the node's stats."""

    def __init__(
        self,
        context: Context,
        *,
        name: str,
        acked: str,
        batch_bytes: int,
        interval: float,
        rate: float,
        on_skipped: Callable[[Node], None] | None = None,  # a bound method
        waiting: int = WAITING,
    ) -> None:
        # Weak: the node's engine holds both, and callbacks still scheduled
        # once it is gone must not keep its parts alive; they do nothing.
        self._context = weakref.ref(context)
        self.batch_bytes = batch_bytes
        """Largest STORE batch sent to a node (bytes of values)."""
        self.interval = interval
        """Seconds between two batches to one node, at least."""
        # Weak too: the owner of ``on_skipped`` holds this shipper.
        self._on_skipped = None if on_skipped is None else weakref.WeakMethod(on_skipped)
        self._max_waiting = waiting
        self._acked = acked
        self._bytes = f"{name}-bytes"
        self._paced = f"{name}-paced"
        self._skipped = f"{name}-skipped"
        self._stopped = f"{name}-stopped"
        self._lock = threading.Lock()  # guards the records below; never held calling out
        self._waiting: OrderedDict[bytes, _Shipment] = OrderedDict()
        self._active: dict[bytes, _Shipment] = {}
        self._total = TokenBuckets(rate, max(rate, batch_bytes))
        self._per_host = TokenBuckets(rate / HOST_SHARE, max(rate / HOST_SHARE, batch_bytes))

    @property
    def sending(self) -> int:
        """Nodes being sent values now, and waiting for their turn."""
        with self._lock:
            return len(self._active) + len(self._waiting)

    def ship(self, shipments: dict[Node, list[Value]]) -> None:
        """Queue each node's values (after those still to go to it, if any),
        then start as many shipments as may run."""
        skipped: list[Node] = []
        with self._lock:
            for node, values in shipments.items():
                batches = batch_values(values, self.batch_bytes)
                if not batches:
                    continue
                current = self._active.get(node.id) or self._waiting.get(node.id)
                if current is not None and current.node == node:
                    current.batches.extend(batches)
                elif len(self._waiting) >= self._max_waiting:
                    skipped.append(node)
                else:
                    self._waiting[node.id] = _Shipment(node, batches)
        context = self._context()
        if context is None:
            return
        for node in skipped:
            context.stats.incr(self._skipped)
            on_skipped = None if self._on_skipped is None else self._on_skipped()
            if on_skipped is not None:
                on_skipped(node)
        self._start_waiting()

    def _start_waiting(self) -> None:
        """Start waiting shipments while fewer than ``ACTIVE`` run, each time
        the oldest of an IP address with the fewest running: sybils on one
        address that never answer must not hold every slot."""
        started = []
        with self._lock:
            while self._waiting and len(self._active) < ACTIVE:
                running = Counter(s.node.address[0] for s in self._active.values())
                waiting = self._waiting
                node_id = min(waiting, key=lambda i: running[waiting[i].node.address[0]])
                shipment = waiting.pop(node_id)
                self._active[node_id] = shipment
                started.append(shipment)
        for shipment in started:
            self._send_next(shipment)

    def _send_next(self, shipment: _Shipment) -> None:
        """Send the shipment's next batch once the budgets and the pending
        slots allow (retrying ``interval`` later until they do)."""
        context = self._context()
        if context is None or context.requests.closed:
            return
        batch = shipment.batches[shipment.next]
        size = sum(len(value.value) for value in batch)
        now = context.clock()
        with self._lock:
            payer = context.diversity.payer(shipment.node.address)
            go = (
                len(context.requests) < context.requests.max_pending // 2
                and self._total.available(None, now) >= size
                and self._per_host.take(payer, size, now)
            )
            if go:
                self._total.charge(None, size, now)
        if not go:
            context.stats.incr(self._paced)
            context.timers.schedule(self.interval, partial(self._send_next, shipment))
            return
        context.stats.incr(self._bytes, size)

        def acknowledged(event: Event, source: Address) -> bool:
            self._sent(shipment, len(batch), None)
            return True

        def refused(error: Exception) -> None:
            self._sent(shipment, 0, error)

        try:
            context.requests.request(
                shipment.node.address,
                shipment.node.id,
                EventType.STORE,
                Store(batch),
                acknowledged,
                refused,
            )
        except ClosedError:
            return

    def _sent(self, shipment: _Shipment, kept: int, error: Exception | None) -> None:
        """A batch was answered: go on with the next, or end the shipment
        when the node has no room for us or did not answer."""
        context = self._context()
        if context is None:
            return
        if kept:
            context.stats.incr(self._acked, kept)
        refusal = error if isinstance(error, StoreRefused) else None
        stop = error is not None and (refusal is None or "full" in refusal.reasons)
        with self._lock:  # ``ship`` may be adding batches
            shipment.next += 1
            ended = stop or shipment.next >= len(shipment.batches)
            if ended and self._active.get(shipment.node.id) is shipment:
                del self._active[shipment.node.id]
        if ended:
            if stop:
                context.stats.incr(self._stopped)
            self._start_waiting()
            return
        context.timers.schedule(self.interval, partial(self._send_next, shipment))
