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

The chosen values go out to each node in batches, one at a time: the next
batch only once the node acknowledged the last (a refusal of ``full`` or no
answer ends the node's transfer), at most ``transfer_interval`` apart, and
within budgets of bytes per second, in all and per IP address (per address
on a trusted local network), for at most ``ACTIVE`` nodes at once and never
with more than half the pending-request slots taken. Newcomers cost an
attacker one FIND_NODE and one PONG each: 256 of them a wave made a node
holding 20 MB send them 863 MiB, and fail its own Stores for want of
pending-request slots.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import Counter, OrderedDict
from functools import partial

from ..errors import ClosedError, StoreRefused
from ..keys import K
from ..wire.events import Address, Event, EventType, Node, Store, Value
from ..wire.sizes import batch_values
from .context import Context
from .ratelimit import TokenBuckets

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
"""Newly seen nodes waiting for their key transfer, and nodes scanned for
waiting for their turn to be sent to (each); more are skipped until the
next periodic refresh."""
ACTIVE = 8
"""Nodes being sent values at once."""
HOST_SHARE = 4
"""One IP address gets at most 1/HOST_SHARE of the transfer rate."""


class _Session:
    """The batches chosen for one node, and how far its transfer got."""

    __slots__ = ("batches", "next", "node")

    def __init__(self, node: Node, batches: list[tuple[Value, ...]]) -> None:
        self.node = node
        self.batches = batches
        self.next = 0


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
        self.batch_bytes = batch_bytes
        """Largest STORE batch sent to a node (bytes of values)."""
        self.interval = interval
        """Seconds between two batches to one node, at least."""
        self.rate = rate
        """Bytes of values per second sent to all nodes together."""
        # Guards the records below; never held while calling out.
        self._lock = threading.Lock()
        self._served: OrderedDict[bytes, float] = OrderedDict()  # node id -> when
        self._queue: dict[bytes, Node] = {}  # newly seen, not yet scanned for
        self._scanning = False
        self._paused = False
        self._waiting: OrderedDict[bytes, _Session] = OrderedDict()  # scanned for
        self._active: dict[bytes, _Session] = {}
        self._total = TokenBuckets(rate, max(rate, batch_bytes))
        self._per_host = TokenBuckets(rate / HOST_SHARE, max(rate / HOST_SHARE, batch_bytes))

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
        for node in nodes:
            batches = batch_values(chosen[node.id], self.batch_bytes)
            if batches:
                self._wait(_Session(node, batches))
        self._start_waiting()

    # -- sending ----------------------------------------------------------------

    @property
    def sending(self) -> int:
        """Nodes being sent values now, and waiting for their turn."""
        with self._lock:
            return len(self._active) + len(self._waiting)

    def _wait(self, session: _Session) -> None:
        with self._lock:
            full = len(self._waiting) >= TRANSFER_QUEUE
            if full:
                self._served.pop(session.node.id, None)  # the next refresh queues it again
            else:
                self._waiting[session.node.id] = session
        context = self._context()
        if full and context is not None:
            context.stats.incr("transfer-skipped")

    def _start_waiting(self) -> None:
        """Start waiting sessions while fewer than ``ACTIVE`` run, each time
        the oldest of an IP address with the fewest running: sybils on one
        address that never answer must not hold every slot."""
        started = []
        with self._lock:
            while self._waiting and len(self._active) < ACTIVE:
                running = Counter(s.node.address[0] for s in self._active.values())
                waiting = self._waiting
                node_id = min(waiting, key=lambda i: running[waiting[i].node.address[0]])
                session = waiting.pop(node_id)
                self._active[node_id] = session
                started.append(session)
        for session in started:
            self._send_next(session)

    def _end(self, session: _Session) -> None:
        with self._lock:
            self._active.pop(session.node.id, None)
        self._start_waiting()

    def _send_next(self, session: _Session) -> None:
        """Send the session's next batch once the budgets and the pending
        slots allow (retrying ``interval`` later until they do)."""
        context = self._context()
        if context is None or context.requests.closed:
            return
        batch = session.batches[session.next]
        size = sum(len(value.value) for value in batch)
        now = context.clock()
        with self._lock:
            payer = context.diversity.payer(session.node.address)
            go = (
                len(context.requests) < context.requests.max_pending // 2
                and self._total.available(None, now) >= size
                and self._per_host.take(payer, size, now)
            )
            if go:
                self._total.charge(None, size, now)
        if not go:
            context.stats.incr("transfer-paced")
            context.timers.schedule(self.interval, partial(self._send_next, session))
            return

        def acknowledged(event: Event, source: Address) -> bool:
            self._sent(session, len(batch), None)
            return True

        def refused(error: Exception) -> None:
            self._sent(session, 0, error)

        try:
            context.requests.request(
                session.node.address,
                session.node.id,
                EventType.STORE,
                Store(batch),
                acknowledged,
                refused,
            )
        except ClosedError:
            return

    def _sent(self, session: _Session, kept: int, error: Exception | None) -> None:
        """A batch was answered: go on with the next, or end the transfer
        when the node has no room for us or did not answer."""
        context = self._context()
        if context is None:
            return
        if kept:
            context.stats.incr("values-transferred", kept)
        refusal = error if isinstance(error, StoreRefused) else None
        stop = error is not None and (refusal is None or "full" in refusal.reasons)
        session.next += 1
        if stop or session.next == len(session.batches):
            if stop:
                context.stats.incr("transfer-stopped")
            self._end(session)
            return
        context.timers.schedule(self.interval, partial(self._send_next, session))
