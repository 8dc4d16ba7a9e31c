"""Replication: each node re-sends the values it holds, for which it is
among the K closest, to the other K closest nodes, every
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
storage may be slow). Each key to send gets a FIND_NODE lookup first, as
the paper's republishing does, a few at a time: the routing table alone
still listed the holders that had left (nothing else had asked them), and
a simulated value whose first holders left a quarter at a time was lost
with them. The values go out through a ``Shipper`` paced by
``replicate_rate``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from functools import partial

from ..keys import K
from ..wire.events import NS_PER_SECOND, Node, Value
from .context import Context
from .operations import NodeLookup
from .shipping import Shipper
from .slots import Slots

RECEIVED_REMEMBERED = 1 << 16
"""Values whose last STORE a node remembers (the least recently received
go first: such a value is merely re-sent once more)."""
REPLICATING_TO = 512
"""Nodes a round may send to (the K closest of every key held: a node's
neighbourhood, a few dozen, unless it holds keys from all over)."""
CLOSEST_CACHED = 1024
"""Keys whose K closest nodes a scan keeps at once."""
LOOKUPS_AT_ONCE = 4
"""Lookups of keys to replicate one node runs at once; the others wait."""


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
        self.slots = Slots(LOOKUPS_AT_ONCE)
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
                for key, values in self._choose().items():
                    self.slots.submit(partial(self._lookup, key, values))
        finally:
            with self._lock:
                self._scanning = False

    def _lookup(self, key: bytes, values: list[Value], done: Callable[[], None]) -> None:
        """Find the K closest nodes to ``key`` now, and send them its values."""

        def found(nodes: list[Node]) -> None:
            target = int.from_bytes(key, "big")
            ours = int.from_bytes(self._context.local_id, "big") ^ target
            among = len(nodes) < K or ours < int.from_bytes(nodes[-1].id, "big") ^ target
            self.shipper.ship({node: values for node in nodes[: K - 1 if among else K]})
            done()

        NodeLookup(self._context, key, found).start()

    def close(self) -> None:
        self.slots.close()

    def _choose(self) -> dict[bytes, list[Value]]:
        """The values to send, by key: those not received within the
        interval, of keys this node is among the K closest to (by its table)."""
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
        among: dict[bytes, bool] = {}  # per key: whether this node is a holder
        chosen: dict[bytes, list[Value]] = {}
        for value in stored:
            if hash((value.key, value.value)) in received:
                continue
            key = value.key
            if key not in among:
                if len(among) >= CLOSEST_CACHED:
                    among.clear()
                among[key] = self._among_closest(key, local)
            if among[key]:
                chosen.setdefault(key, []).append(value)
        return chosen

    def _among_closest(self, key: bytes, local: int) -> bool:
        """Whether this node is among the K closest to ``key`` it knows of."""
        nodes = self._context.table.closest(key, K)
        target = int.from_bytes(key, "big")
        return len(nodes) < K or int.from_bytes(nodes[-1].id, "big") ^ target > local ^ target
