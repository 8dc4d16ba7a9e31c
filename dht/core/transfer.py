"""Key transfer (D34): a newly seen node gets the values it should hold.

Those are the values whose key it is closer to than we are, and for which it
is among the K closest nodes we know (all values while the network is
smaller than K). A node is served at most once per ``refresh_interval``, so
a contact that is evicted and seen again under packet loss is not sent
everything again.

The store is scanned on the timer thread, ``TRANSFER_SLICE`` keys per
callback (values, for a storage without ``Keys``), one scan at a time for
every node queued meanwhile: a scan of a large store ran on the listener
thread for each newly seen node (1 s per node with 100,000 values), so fresh
node ids made a node deaf. The chosen values go out in bounded batches at a
bounded rate, never the whole store at once.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from ..errors import ClosedError
from ..keys import K
from ..wire.events import EventType, Node, Store, Value
from .callbacks import ignore
from .handler import batch_values
from .storage import GuardedStorage

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("dht.engine")

TRANSFERRED_NODES = 65536
"""Nodes remembered as served (least recently used go)."""
TRANSFER_QUEUE = 64
"""Newly seen nodes waiting for their key transfer; more are skipped until
the next periodic refresh."""
TRANSFER_SLICE = 500
"""Keys (or, for a storage without ``Keys``, values) one timer callback of a
scan looks at: a few ms of the shared timer thread with one value per key
(15 ms at most, measured with 200,000 values)."""


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
            engine.timers.schedule(0.0, self._scan)

    def _scan(self) -> None:
        """Timer thread: start a scan of the store for the queued nodes."""
        self._step(self._start_scan)

    def _start_scan(self) -> None:
        engine = self._engine()
        with self._lock:
            nodes = list(self._queue.values())
            self._queue.clear()
            if engine is None or engine.closed or not nodes:
                self._scanning = False
                return
        storage = engine.guarded_storage
        keys = storage.Keys()
        scan: _Scan
        if keys is not None:
            scan = _Scan(len(keys), lambda at: _values_of(storage, keys[at : at + TRANSFER_SLICE]))
        else:  # only Iterate: the whole store at once, then slices of values
            values: list[Value] = []

            def collect(value: Value) -> bool:
                values.append(value)
                return True

            storage.Iterate(collect)
            scan = _Scan(len(values), lambda at: values[at : at + TRANSFER_SLICE])
        chosen: dict[bytes, list[Value]] = {node.id: [] for node in nodes}
        self._slice(nodes, scan, 0, chosen, len(engine.table) < K)

    def _step(self, step: Callable[..., None], *args: object) -> None:
        """Run one step of a scan; if it raises, end the scan (and start the
        next for the nodes queued meanwhile), so key transfer goes on."""
        try:
            step(*args)
        except Exception:
            log.exception("key transfer failed")
            engine = self._engine()
            if engine is not None:
                engine.stats.incr("transfer-error")
                engine.timers.schedule(0.0, self._scan)

    def _slice(
        self,
        nodes: list[Node],
        scan: _Scan,
        start: int,
        chosen: dict[bytes, list[Value]],
        everything: bool,
    ) -> None:
        """Timer thread: select from the values of one slice of ``scan``
        from ``start``, then go on in another callback, or send what was
        chosen and scan again for the nodes queued meanwhile."""
        engine = self._engine()
        if engine is None:
            return
        local = int.from_bytes(engine.local_id, "big")
        ids = [(node.id, int.from_bytes(node.id, "big")) for node in nodes]
        closest: dict[bytes, set[bytes]] = {}
        for value in scan.read(start):
            key = value.key
            if everything:
                for node_id, _ in ids:
                    chosen[node_id].append(value)
                continue
            target = int.from_bytes(key, "big")
            ours = local ^ target
            for node_id, number in ids:
                if number ^ target >= ours:
                    continue  # we are closer: it is not the node's to hold
                near = closest.get(key)
                if near is None:
                    near = closest[key] = {n.id for n in engine.table.closest(key, K)}
                if node_id in near:
                    chosen[node_id].append(value)
        timers = engine.timers
        if start + TRANSFER_SLICE < scan.size and not engine.closed:
            rest = (nodes, scan, start + TRANSFER_SLICE, chosen, everything)
            timers.schedule(0.0, partial(self._step, self._slice, *rest))
            return
        for node in nodes:
            for i, batch in enumerate(batch_values(chosen[node.id], self.batch_bytes)):
                timers.schedule(i * self.interval, partial(self._send_batch, node, batch))
        # The nodes queued meanwhile, if any: in a callback of its own (a
        # direct call recursed once per scan while nodes kept coming).
        timers.schedule(0.0, self._scan)

    def _send_batch(self, node: Node, batch: tuple[Value, ...]) -> None:
        engine = self._engine()
        if engine is None:
            return
        try:
            engine.request(node.address, node.id, EventType.STORE, Store(batch), ignore, ignore)
        except ClosedError:
            return
        engine.stats.incr("values-transferred", len(batch))


@dataclass(frozen=True, slots=True)
class _Scan:
    """A scan: ``size`` keys (or values) in all, and the values of the slice
    of ``TRANSFER_SLICE`` of them from a position."""

    size: int
    read: Callable[[int], list[Value]]


def _values_of(storage: GuardedStorage, keys: list[bytes]) -> list[Value]:
    return [value for key in keys for value in storage.Get(key)]
