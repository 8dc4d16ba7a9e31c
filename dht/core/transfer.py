"""Key transfer (D34): a newly seen node gets the values it should hold.

Those are the values whose key it is closer to than we are, and for which it
is among the K closest nodes we know (all values while the network is
smaller than K). A node is served at most once per ``refresh_interval``, so
a contact that is evicted and seen again under packet loss is not sent
everything again.

Newly seen nodes are queued, and the store is scanned once for all nodes
queued within ``TRANSFER_DELAY``, in a job on the engine's ``background``
thread (the worker): it iterates the user's storage, which may take seconds. A scan ran
on the listener thread for each newly seen node (1 s per node with 100,000
values), so fresh node ids made a node deaf; then on the shared timer
thread, where it held up the timeouts of every node in the process. The
chosen values go out in bounded batches at a bounded rate, never the whole
store at once.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import Counter, OrderedDict
from functools import partial
from typing import TYPE_CHECKING

from ..errors import ClosedError
from ..keys import K
from ..wire.events import EventType, Node, Store, Value
from .callbacks import ignore
from .handler import batch_values

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("dht.engine")

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
the next periodic refresh."""


class KeyTransfer:
    """One engine's key transfer: ``offer`` a newly seen node (any thread)."""

    def __init__(self, engine: Engine, *, batch_bytes: int, interval: float) -> None:
        # Weak: the engine holds this object, and a cycle would keep a
        # closed node's engine for the garbage collector. Once the engine is
        # gone, callbacks still scheduled do nothing.
        self._engine = weakref.ref(engine)
        self.batch_bytes = batch_bytes
        """Largest STORE batch sent to a node (bytes of values)."""
        self.interval = interval
        """Seconds between two batches to one node."""
        # Guards the three records below; never held while calling out.
        self._lock = threading.Lock()
        self._served: OrderedDict[bytes, float] = OrderedDict()  # node id -> when
        self._queue: dict[bytes, Node] = {}  # newly seen, not yet scanned for
        self._scanning = False

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
        engine = self._engine()
        if engine is None:
            return
        now = engine.clock()
        with self._lock:
            last = self._served.get(node.id)
            if last is not None and now - last < engine.refresh_interval:
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
                start = not self._scanning
                self._scanning = True
        if skipped:
            engine.stats.incr("transfer-skipped")
        elif start:
            engine.timers.schedule(TRANSFER_DELAY, partial(engine.background, self._scan))

    def _scan(self) -> None:
        """Background thread: scan the store for the queued nodes, then
        submit the scan for those queued meanwhile, if any, behind the other
        nodes' jobs (the worker is shared). A scan that raises is counted
        and logged, and the next one goes on."""
        engine = self._engine()
        with self._lock:
            nodes = list(self._queue.values())
            self._queue.clear()
            if engine is None or engine.closed or not nodes:
                self._scanning = False
                return
        try:
            self._serve(engine, nodes)
        except Exception:
            engine.stats.incr("transfer-error")
            log.exception("key transfer failed")
        with self._lock:
            if not self._queue:
                self._scanning = False
                return
        engine.background(self._scan)

    def _serve(self, engine: Engine, nodes: list[Node]) -> None:
        """Select from the store the values each of ``nodes`` should hold,
        and schedule their sending in batches. The values are collected
        first and chosen after ``Iterate`` returns: a user's storage may
        hold its lock while it iterates, keeping its node's listeners from
        ``Get`` and ``Set``."""
        stored: list[Value] = []

        def collect(value: Value) -> bool:
            stored.append(value)
            return not engine.closed

        engine.guarded_storage.Iterate(collect)
        chosen: dict[bytes, list[Value]] = {node.id: [] for node in nodes}
        if len(engine.table) < K:  # a small network: every value, to every node
            for node in nodes:
                chosen[node.id] = stored
        else:
            local = int.from_bytes(engine.local_id, "big")
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
                        near = closest[key] = {n.id for n in engine.table.closest(key, K)}
                    if node_id in near:
                        chosen[node_id].append(value)
        for node in nodes:
            for i, batch in enumerate(batch_values(chosen[node.id], self.batch_bytes)):
                engine.timers.schedule(i * self.interval, partial(self._send_batch, node, batch))

    def _send_batch(self, node: Node, batch: tuple[Value, ...]) -> None:
        engine = self._engine()
        if engine is None:
            return
        try:
            engine.request(node.address, node.id, EventType.STORE, Store(batch), ignore, ignore)
        except ClosedError:
            return
        engine.stats.incr("values-transferred", len(batch))
