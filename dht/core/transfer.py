"""Key transfer (D34): a newly seen node gets the values it should hold.

Those are the values whose key it is closer to than we are, and for which it
is among the K closest nodes we know (all values while the network is
smaller than K). A node is served at most once per ``refresh_interval``, so
a contact that is evicted and seen again under packet loss is not sent
everything again.

Newly seen nodes are queued, and the store is scanned once for all nodes
queued within ``TRANSFER_DELAY``, in a job on the node's ``background``
thread (the worker): it iterates the user's storage, which may take seconds. A scan ran
on the listener thread for each newly seen node (1 s per node with 100,000
values), so fresh node ids made a node deaf; then on the shared timer
thread, where it held up the timeouts of every node in the process.

The chosen values go out to each node in paced batches within a budget of
bytes per second (``shipping.Shipper``).
"""

from __future__ import annotations

import threading
import weakref
from collections import Counter, OrderedDict
from functools import partial

from ..keys import K
from ..wire.events import Node, Value
from . import nodelog
from .context import Context
from .shipping import Shipper

log = nodelog.logger("dht.engine")

TRANSFERRED_NODES = 65536
"""Nodes remembered as served (least recently used go)."""
TRANSFER_DELAY = 0.05
"""Seconds between a newly seen node and the start of the scan for it, so
that nodes seen together (a join, the answers of a lookup) share one scan:
a scan per node made joining 100 nodes in one process 8% slower."""
CLOSEST_CACHED = 1024
"""Keys whose K closest nodes a scan keeps at once (about 2 KB each; a
store's values of one key usually come together)."""
TRANSFER_QUEUE = 64
"""Newly seen nodes waiting for their key transfer; more are skipped until
the next maintenance round."""


class KeyTransfer:
    """One node's key transfer: ``offer`` a newly seen node (any thread)."""

    def __init__(
        self,
        context: Context,
        *,
        serve_every: float,
        batch_bytes: int,
        interval: float,
        rate: float,
    ) -> None:
        # Weak: the node's engine holds both, and callbacks still scheduled
        # once it is gone must not keep its parts alive; they do nothing.
        self._context = weakref.ref(context)
        self.serve_every = serve_every
        """Seconds before a node served may be served again."""
        self.shipper = Shipper(
            context,
            name="transfer",
            acked="values-transferred",
            batch_bytes=batch_bytes,
            interval=interval,
            rate=rate,
            on_skipped=self._forget,
        )
        # Guards the records below; never held while calling out.
        self._lock = threading.Lock()
        self._served: OrderedDict[bytes, float] = OrderedDict()  # node id -> when
        self._queue: dict[bytes, Node] = {}  # newly seen, not yet scanned for
        self._scanning = False
        self._paused = False

    @property
    def sending(self) -> int:
        """Nodes being sent values now, and waiting for their turn."""
        return self.shipper.sending

    def _forget(self, node: Node) -> None:
        """A node the shipper had no room for: the next round queues it again."""
        with self._lock:
            self._served.pop(node.id, None)

    @property
    def scanning(self) -> bool:
        """Whether a scan is running or scheduled."""
        with self._lock:
            return self._scanning

    def served(self) -> set[bytes]:
        """Ids of the nodes served (or queued) recently."""
        with self._lock:
            return set(self._served)

    def queued(self) -> list[bytes]:
        """Ids of the nodes waiting for the next scan."""
        with self._lock:
            return list(self._queue)

    def offer(self, node: Node) -> None:
        """Queue ``node`` for the values it should hold, unless it was served
        within ``refresh_interval`` or the queue is full."""
        context = self._context()
        if context is None:
            return
        now = context.clock()
        with self._lock:
            last = self._served.get(node.id)
            if last is not None and now - last < self.serve_every:
                return
            queue = self._queue
            if len(queue) >= TRANSFER_QUEUE:
                # Full: a newcomer from a less represented address takes the
                # place of one from the most represented (sybils on one
                # address kept honest newcomers from their keys).
                hosts = Counter(queued.address[0] for queued in queue.values())
                busiest, most = hosts.most_common(1)[0]
                if hosts[node.address[0]] + 1 < most:
                    given_up = next(i for i, q in queue.items() if q.address[0] == busiest)
                    del queue[given_up]
                    self._served.pop(given_up, None)  # the next refresh queues it again
            if len(queue) >= TRANSFER_QUEUE:
                skipped = True
            else:
                skipped = False
                self._served[node.id] = now
                self._served.move_to_end(node.id)
                if len(self._served) > TRANSFERRED_NODES:
                    self._served.popitem(last=False)
                queue[node.id] = node
                start = not self._scanning and not self._paused
                self._scanning = self._scanning or start
        if skipped:
            context.stats.incr("transfer-skipped")
        elif start:
            context.timers.schedule(TRANSFER_DELAY, partial(context.background, self._scan))

    def pause(self) -> None:
        """Queue newly seen nodes but serve none, until ``resume``: while this
        node joins, its table does not yet say who should hold what. A
        joiner with fewer than K contacts took the network for a small one
        and handed every value it had been given to every node it met; under
        churn a value spread to 600 of 10,000 simulated nodes (dht.sim)."""
        with self._lock:
            self._paused = True

    def resume(self) -> None:
        """Serve the nodes queued while paused, and those seen from now on."""
        context = self._context()
        with self._lock:
            self._paused = False
            start = bool(self._queue) and not self._scanning
            self._scanning = self._scanning or start
        if start and context is not None:
            context.timers.schedule(TRANSFER_DELAY, partial(context.background, self._scan))

    def _scan(self) -> None:
        """Background thread: scan the store for the queued nodes, then
        submit the scan for those queued meanwhile, if any, behind the other
        nodes' jobs (the worker is shared). A scan that raises is counted
        and logged, and the next one goes on."""
        context = self._context()
        with self._lock:
            nodes = list(self._queue.values())
            self._queue.clear()
            if context is None or context.requests.closed or not nodes:
                self._scanning = False
                return
        try:
            self._serve(context, nodes)
        except Exception:
            context.stats.incr("transfer-error")
            log.exception("key transfer failed")
        with self._lock:
            if not self._queue:
                self._scanning = False
                return
        context.background(self._scan)

    def _serve(self, context: Context, nodes: list[Node]) -> None:
        """Select from the store the values each of ``nodes`` should hold,
        and schedule their sending in batches. The values are collected
        first and chosen after ``Iterate`` returns: a user's storage may
        hold its lock while it iterates, keeping its node's listeners from
        ``Get`` and ``Set``."""
        stored: list[Value] = []

        def collect(value: Value) -> bool:
            stored.append(value)
            return not context.requests.closed

        context.storage.Iterate(collect)
        chosen: dict[bytes, list[Value]] = {node.id: [] for node in nodes}
        if len(context.table) < K:  # a small network: every value, to every node
            for node in nodes:
                chosen[node.id] = stored
        else:
            local = int.from_bytes(context.local_id, "big")
            ids = [(node.id, int.from_bytes(node.id, "big")) for node in nodes]
            closest: dict[bytes, set[bytes]] = {}  # per key: the K closest we know
            for value in stored:
                key = value.key
                target = int.from_bytes(key, "big")
                ours = local ^ target
                for node_id, number in ids:
                    if number ^ target >= ours:
                        continue  # we are closer: it is not the node's to hold
                    near = closest.get(key)
                    if near is None:
                        if len(closest) >= CLOSEST_CACHED:
                            closest.clear()
                        near = closest[key] = {n.id for n in context.table.closest(key, K)}
                    if node_id in near:
                        chosen[node_id].append(value)
        self.shipper.ship({node: chosen[node.id] for node in nodes})
