"""Replication: each node re-sends the values it holds, for which it is
among the K closest, to the other K closest nodes it knows, every
``replicate_interval`` (the Kademlia paper, 2.5).

Nodes leave and others join closer to a key; the holders that remain hand
the value to whoever should hold it now, so it outlives its first holders.
A value received by STORE within the interval is not re-sent (the paper's
optimisation): whoever sent it did this round's work, so in a network of
ours about one holder per key sends each round, not K. Copies keep the
original ``created`` and ``ttl``: a replicated copy expires at the same
instant as the first one. Each node's first round comes at a random point
of the interval, so the holders of a key do not all send at once.

The scan of the storage runs on the node's ``background`` thread (a user's
storage may be slow); the values go out through a ``Shipper`` paced by
``replicate_rate``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from ..keys import K
from ..wire.events import NS_PER_SECOND, Node, Value
from .context import Context
from .shipping import Shipper

RECEIVED_REMEMBERED = 1 << 16
"""Values whose last STORE a node remembers (the least recently received
go first: such a value is merely re-sent once more)."""
REPLICATING_TO = 512
"""Nodes a round may send to (the K closest of every key held: a node's
neighbourhood, a few dozen, unless it holds keys from all over)."""
CLOSEST_CACHED = 1024
"""Keys whose K closest nodes a scan keeps at once."""


class Replication:
    """One node's replication; ``received`` for each value a STORE brought
    (any thread), ``run`` once per maintenance round (timer thread)."""

    def __init__(
        self, context: Context, *, batch_bytes: int, interval: float, first_round: float
    ) -> None:
        self._context = context
        schedule = context.schedule
        self.interval = schedule.replicate_interval
        self.shipper = Shipper(
            context,
            name="replicate",
            acked="values-replicated",
            batch_bytes=batch_bytes,
            interval=interval,
            rate=schedule.replicate_rate,
            waiting=REPLICATING_TO,
        )
        self._lock = threading.Lock()  # guards the three below
        self._received: OrderedDict[int, int] = OrderedDict()  # hash -> ns
        self._next = first_round
        self._scanning = False

    def received(self, value: Value) -> None:
        """A STORE from another node brought ``value`` (it was kept)."""
        identity = hash((value.key, value.value))
        now_ns = self._context.wall_clock_ns()
        with self._lock:
            self._received[identity] = now_ns
            self._received.move_to_end(identity)
            if len(self._received) > RECEIVED_REMEMBERED:
                self._received.popitem(last=False)

    def run(self, now: float) -> None:
        """Start a round if one is due (and the last one's scan is over)."""
        with self._lock:
            if now < self._next or self._scanning:
                return
            self._next = now + self.interval
            self._scanning = True
        self._context.stats.incr("replication-rounds")
        self._context.background(self._scan)

    def _scan(self) -> None:
        """Background thread: choose what to send to whom, and ship it."""
        context = self._context
        try:
            if not context.requests.closed:
                self.shipper.ship(self._choose())
        finally:
            with self._lock:
                self._scanning = False

    def _choose(self) -> dict[Node, list[Value]]:
        context = self._context
        stored: list[Value] = []

        def collect(value: Value) -> bool:
            stored.append(value)
            return not context.requests.closed

        context.storage.Iterate(collect)
        since = context.wall_clock_ns() - int(self.interval * NS_PER_SECOND)
        with self._lock:
            received = {
                identity: when for identity, when in self._received.items() if when >= since
            }
        local = int.from_bytes(context.local_id, "big")
        closest: dict[bytes, list[Node] | None] = {}  # per key: the others to send to
        shipments: dict[Node, list[Value]] = {}
        for value in stored:
            if hash((value.key, value.value)) in received:
                continue
            key = value.key
            if key not in closest:
                if len(closest) >= CLOSEST_CACHED:
                    closest.clear()
                closest[key] = self._others(key, local)
            others = closest[key]
            for node in others or ():
                shipments.setdefault(node, []).append(value)
        return shipments

    def _others(self, key: bytes, local: int) -> list[Node] | None:
        """The K - 1 contacts that hold ``key`` with this node, or None if
        this node is not among its K closest."""
        nodes = self._context.table.closest(key, K)
        target = int.from_bytes(key, "big")
        if len(nodes) == K and int.from_bytes(nodes[-1].id, "big") ^ target < local ^ target:
            return None
        return nodes[: K - 1]
