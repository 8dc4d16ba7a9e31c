"""The protocol engine: what a node does, without sockets or threads.

The shell gives it a ``transport`` (send these datagrams to that address),
``timers`` (schedule/cancel a callback), clocks and an id source, and feeds
it decoded events with ``receive``. It keeps the routing table, the pending
requests (one table shared by every listener: a reply may arrive on any
socket) and the running operations (bootstrap, Store, Find).

Threading: ``receive`` runs on listener threads, timeouts on the timer
thread, ``store``/``find``/``bootstrap`` on user threads, all concurrently.
Shared state is guarded by small locks; no lock is held while calling a
user callback (operations deliver through a serial outbox, see ``_Operation``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from ..errors import (
    BootstrapError,
    ClosedError,
    DHTError,
    NotFoundError,
    RequestTimeout,
    StoreError,
)
from ..keys import ALPHA, K, distance
from ..wire.codec import encode
from ..wire.events import (
    Address,
    Event,
    EventType,
    FindNode,
    FindValue,
    Node,
    Payload,
    Store,
    Value,
)
from ..wire.framing import fragment
from .amplification import AmplificationGuard
from .handler import answer, batch_values
from .lookup import Lookup, State
from .routing import RoutingTable
from .storage import GuardedStorage, Storage

log = logging.getLogger("dht.engine")

Transport = Callable[[list[bytes], Address], None]
"""Sends datagrams to an address; raises OSError on failure."""

MAX_VERIFYING = 256
"""Unsolicited senders being pinged at once (bounds work under a flood)."""
MAX_VERIFYING_PER_HOST = 16
"""Of those, at one IP address once half are taken: a flood of new ids from
one address took every slot, and honest newcomers were never verified (nor
joined). Below half, nodes sharing an address (a host, a loopback
cluster) are verified freely."""
BOOTSTRAP_RETRIES = 2
"""Resends of the FIND_NODE to each bootstrap address (one lost datagram
must not make New fail)."""
TRANSFERRED_NODES = 65536
"""Nodes remembered as served by key transfer (least recently used go)."""
TRANSFER_QUEUE = 64
"""Newly seen nodes waiting for their key transfer; more are skipped until
the next periodic refresh."""
TRANSFER_SLICE = 500
"""Keys (or, for a storage without ``Keys``, values) one timer callback of a
key-transfer scan looks at: a few ms of the shared timer thread with one
value per key (15 ms at most, measured with 200,000 values)."""

_RESPONSE_TYPE = {EventType.PING: EventType.PONG}


class Timers(Protocol):
    """Schedules callbacks on the timer thread."""

    def schedule(self, delay: float, callback: Callable[[], None]) -> object: ...

    def cancel(self, handle: object) -> None: ...


class Stats:
    """Thread-safe event counters, by name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def incr(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class _Request:
    __slots__ = (
        "address",
        "event",
        "kind",
        "measurable",
        "node_id",
        "on_failure",
        "on_response",
        "on_stall",
        "retries",
        "sent",
        "timer",
    )

    def __init__(
        self,
        event: Event,
        address: Address,
        node_id: bytes | None,
        on_response: Callable[[Event, Address], bool],
        on_failure: Callable[[Exception], object],
        retries: int,
        on_stall: Callable[[], object] | None,
    ) -> None:
        self.event = event
        self.kind = _RESPONSE_TYPE.get(event.type, event.type)
        self.address = address
        self.node_id = node_id
        self.on_response = on_response
        self.on_failure = on_failure
        self.retries = retries
        self.on_stall = on_stall
        self.sent = 0.0  # engine clock, seconds: the last send
        self.measurable = True
        """Whether an answer gives a round-trip sample: not after a resend,
        which it may answer either send of (Karn), nor for later parts."""
        self.timer: object = None


class Engine:
    """One node's protocol logic. See the module docstring for threading."""

    def __init__(
        self,
        local_id: bytes,
        *,
        storage: Storage,
        transport: Transport,
        timers: Timers,
        clock: Callable[[], float],
        wall_clock_ns: Callable[[], int],
        new_id: Callable[[], bytes],
        timeout: float,
        stall_after: float | None = None,
        refresh_interval: float = 60.0,
        max_pending: int = 8192,
        amplification_limit: int = 65536,
        transfer_batch_bytes: int = 16384,
        transfer_interval: float = 0.02,
        log_new_nodes: bool = False,
    ) -> None:
        self.local_id = local_id
        self.table = RoutingTable(local_id)
        self.stats = Stats()
        self.storage = storage  # also sets self._storage, the guarded one
        self.timeout = timeout
        self.stall_after = stall_after if stall_after is not None else timeout / 4
        self.refresh_interval = refresh_interval
        self._transport = transport
        self._timers = timers
        self._clock = clock
        self._wall_clock_ns = wall_clock_ns
        self._new_id = new_id
        # Guards _pending, _operations, _verifying(_hosts), closed, and the
        # key-transfer records below (the amplification guard has its own).
        self._lock = threading.Lock()
        self._pending: dict[bytes, _Request] = {}
        self._operations: set[_Operation] = set()
        self._verifying: set[bytes] = set()
        self._verifying_hosts: Counter[str] = Counter()  # of _verifying, per IP address
        self.max_pending = max_pending
        self.transfer_batch_bytes = transfer_batch_bytes
        self.transfer_interval = transfer_interval
        self._new_node_level = logging.INFO if log_new_nodes else logging.DEBUG
        self.amplification = AmplificationGuard(amplification_limit, hold_for=timeout)
        self._transferred: OrderedDict[bytes, float] = OrderedDict()  # node id -> when
        self._transfer_queue: dict[bytes, Node] = {}  # newly seen, not yet scanned for
        self._transfer_scanning = False
        self.closed = False
        self._refresh_timer: object = None
        self.smoothed_rtt: float | None = None
        """Seconds from request to response, averaged (RFC 6298's 1/8 gain)."""

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """Start the periodic liveness check."""
        self._refresh_timer = self._timers.schedule(self.refresh_interval, self._refresh)

    def close(self) -> None:
        """End every operation and pending request once with ``ClosedError``.
        Runs their callbacks on the calling thread. Idempotent."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            operations = list(self._operations)
            self._operations.clear()
            pending = list(self._pending.values())
            self._pending.clear()
        if self._refresh_timer is not None:
            self._timers.cancel(self._refresh_timer)
        error = ClosedError("the node was closed")
        for operation in operations:
            operation.finish(error)
        for request in pending:
            self._timers.cancel(request.timer)
            _call(request.on_failure, error)
        # The transport is a method of the node that holds this engine: let
        # go of it, so a closed node is freed by reference counting, not
        # left in a cycle for the garbage collector.
        self._transport = _send_nothing

    def _register(self, operation: _Operation) -> bool:
        with self._lock:
            if self.closed:
                return False
            self._operations.add(operation)
            return True

    def _unregister(self, operation: _Operation) -> None:
        with self._lock:
            self._operations.discard(operation)

    @property
    def pending_requests(self) -> int:
        with self._lock:
            return len(self._pending)

    # -- sending ------------------------------------------------------------

    def request(
        self,
        address: Address,
        node_id: bytes | None,
        event_type: EventType,
        payload: Payload | None,
        on_response: Callable[[Event, Address], bool],
        on_failure: Callable[[Exception], object],
        *,
        retries: int = 0,
        on_stall: Callable[[], object] | None = None,
    ) -> None:
        """Send a request; ``on_response(event, source)`` runs for each response
        event (return True when no more are expected), ``on_failure(error)``
        once if it times out (after ``retries`` resends) or cannot be sent.
        ``on_stall()``, if given, runs once when no answer has come after
        ``stall_after`` seconds (the request still waits for its timeout).
        A response is accepted only from ``address`` and, when ``node_id`` is
        given, only with that sender id (D14)."""
        event = Event(self._new_id(), self.local_id, event_type, False, payload)
        if self.stall_after >= self.timeout:
            on_stall = None
        request = _Request(event, address, node_id, on_response, on_failure, retries, on_stall)
        with self._lock:
            if self.closed:
                raise ClosedError("the node was closed")
            full = len(self._pending) >= self.max_pending
            if not full:
                self._pending[event.id] = request
                # One timer per request: first the stall, then the timeout.
                if on_stall is None:
                    request.timer = self._timers.schedule(
                        self.timeout, lambda: self._expired(request)
                    )
                else:
                    request.timer = self._timers.schedule(
                        self.stall_after, lambda: self._stalled(request)
                    )
        if full:
            self.stats.incr("request-refused-pending-cap")
            error = DHTError(f"{self.max_pending} requests are already pending")
            self._timers.schedule(0.0, lambda: _discard(_call(on_failure, error)))
            return
        self._send_request(request)

    def _send_request(self, request: _Request) -> None:
        request.sent = self._clock()
        try:
            self._send(request.event, request.address)
        except OSError as error:
            # A datagram the kernel refused (a firewall, a full buffer) is a
            # lost datagram: the timeout retries or reports it, once.
            self.stats.incr("send-failed")
            log.debug("send to %s failed: %s", request.address, error)
        except DHTError as error:
            with self._lock:
                if self._pending.get(request.event.id) is not request:
                    return
                del self._pending[request.event.id]
            self._timers.cancel(request.timer)
            self.stats.incr("send-failed")
            # Report from the timer thread, not re-entrantly from the caller (D23).
            failure: Exception = error
            self._timers.schedule(0.0, lambda: _discard(_call(request.on_failure, failure)))

    def _send(self, event: Event, address: Address) -> None:
        self._transport(fragment(event.id, encode(event)), address)

    def _stalled(self, request: _Request) -> None:
        with self._lock:
            if self._pending.get(request.event.id) is not request:
                return
            request.timer = self._timers.schedule(
                self.timeout - self.stall_after, lambda: self._expired(request)
            )
        on_stall, request.on_stall = request.on_stall, None
        if on_stall is not None:
            _call(on_stall)

    def _expired(self, request: _Request) -> None:
        with self._lock:
            if self._pending.get(request.event.id) is not request:
                return
            if request.retries > 0 and not self.closed:
                request.retries -= 1
                request.timer = self._timers.schedule(self.timeout, lambda: self._expired(request))
                resend = True
            else:
                del self._pending[request.event.id]
                resend = False
        if resend:
            request.measurable = False
            self.stats.incr("request-retried")
            self._send_request(request)
            return
        self.stats.incr("request-timeout")
        if request.node_id is not None:
            self.table.failed(request.node_id, request.address)
        _call(request.on_failure, RequestTimeout(request.address, self.timeout))

    def hedge_delay(self) -> float | None:
        """How long a first-value lookup waits for its single first query
        before asking more nodes: four smoothed round trips, at most
        ``stall_after``. None before any round trip was measured."""
        srtt = self.smoothed_rtt
        return None if srtt is None else min(4 * srtt, self.stall_after)

    # -- receiving ----------------------------------------------------------

    def receive(self, event: Event, source: Address) -> None:
        """Handle one decoded event that arrived from ``source``."""
        if event.sender == self.local_id:
            self.stats.incr("drop-own-id")
            return
        if event.response:
            self._on_response(event, source)
        else:
            self._on_request(event, source)

    def _on_response(self, event: Event, source: Address) -> None:
        # Claim the request before running its callback: a timeout on the
        # timer thread or a Close meanwhile then finds nothing to end twice.
        with self._lock:
            request = self._pending.get(event.id)
            drop = _mismatch(request, event, source)
            if drop is None:
                del self._pending[event.id]
        if drop is not None:
            self.stats.incr(drop)
            return
        assert request is not None
        self._timers.cancel(request.timer)
        now = self._clock()
        if request.measurable:
            rtt = now - request.sent
            srtt = self.smoothed_rtt  # a race between listeners only blurs the average
            self.smoothed_rtt = rtt if srtt is None else srtt + (rtt - srtt) / 8
        held = self.amplification.prove(source, now)
        if held:
            self._send_events(held, source)
        newly_seen = self.table.add_verified(event.sender, source, now)
        if _call(request.on_response, event, source) is False:
            self._await_rest(request)
        if newly_seen:
            log.log(
                self._new_node_level, "discovered node %s at %s:%d", event.sender.hex(), *source
            )
            self._transfer_keys(Node(event.sender, source))

    def _await_rest(self, request: _Request) -> None:
        """Pend again a request whose answer has more events to come, until
        its original timeout (a slow trickle of parts does not extend it)."""
        request.measurable = False  # later parts are no round-trip samples
        with self._lock:
            if not self.closed:
                self._pending[request.event.id] = request
                left = max(request.sent + self.timeout - self._clock(), 0.0)
                request.timer = self._timers.schedule(left, lambda: self._expired(request))
                return
        _call(request.on_failure, ClosedError("the node was closed"))

    def _on_request(self, event: Event, source: Address) -> None:
        sender = event.sender
        if self.amplification.spent(source, self._clock()):  # not worth any work
            self.stats.incr("drop-amplification")
        else:
            self._answer(event, source)
        # Answer first, then meet the sender: a joining node asks us and we
        # ping it back; with our answer already on its way, it knows us when
        # our ping arrives and need not ping us in turn.
        now = self._clock()
        if not self.table.touch(sender, source, now):
            if self.table.wants(sender):
                self._prove(sender, source)
            else:
                self.table.add_candidate(sender, source, now)

    def _answer(self, event: Event, source: Address) -> None:
        sender = event.sender
        requester = Node(sender, source)
        responses = answer(event, requester, self.table, self._storage, self.stats.incr)
        for index, response in enumerate(responses):
            try:
                datagrams = fragment(response.id, encode(response))
            except DHTError as error:
                self.stats.incr("send-failed")
                log.debug("cannot answer %s: %s", source, error)
                continue
            now = self._clock()
            verdict = self.amplification.allow(source, sum(map(len, datagrams)), now)
            if verdict.prove:
                self._prove(sender, source)
            if not verdict.send:
                # Hold the rest until the ping proves the source: cut short,
                # a split answer left the requester waiting for parts.
                self.stats.incr("held-amplification")
                rest = [datagrams]
                for later in responses[index + 1 :]:
                    with contextlib.suppress(DHTError):
                        rest.append(fragment(later.id, encode(later)))
                self.amplification.hold(source, rest, now)
                return
            self._send_events([datagrams], source)

    def _send_events(self, events: list[list[bytes]], destination: Address) -> None:
        """Send the datagrams of each event; a failure is counted, not raised."""
        for datagrams in events:
            try:
                self._transport(datagrams, destination)
            except OSError as error:
                self.stats.incr("send-failed")
                log.debug("cannot answer %s: %s", destination, error)

    def _prove(self, node_id: bytes, address: Address) -> None:
        """Ping ``address`` expecting ``node_id``. An answer proves the address
        is real: it lifts the amplification cap, and offers the node to the
        routing table (how unsolicited senders get verified)."""
        host = address[0]
        with self._lock:
            busy = len(self._verifying)
            if (
                node_id in self._verifying
                or busy >= MAX_VERIFYING
                or (
                    busy >= MAX_VERIFYING // 2
                    and self._verifying_hosts[host] >= MAX_VERIFYING_PER_HOST
                )
            ):
                return
            self._verifying.add(node_id)
            self._verifying_hosts[host] += 1

        def done(*_: object) -> bool:
            with self._lock:
                self._verifying.discard(node_id)
                self._verifying_hosts[host] -= 1
                if not self._verifying_hosts[host]:
                    del self._verifying_hosts[host]
            return True

        try:
            self.request(address, node_id, EventType.PING, None, done, done)
        except ClosedError:
            done()

    # -- key transfer and liveness -------------------------------------------

    def _transfer_keys(self, node: Node) -> None:
        """Queue a newly seen node for the values it should hold (D34): those
        whose key it is closer to than we are and for which it is among the
        K closest nodes we know (all values while the network is smaller
        than K). A node is served at most once per ``refresh_interval``, so a
        contact that is evicted and seen again under packet loss is not sent
        everything again.

        The store is scanned on the timer thread, ``TRANSFER_SLICE`` keys
        per callback (values, for a storage without ``Keys``), one scan at a
        time for every node queued meanwhile: a scan of a large store ran on
        the listener thread for each newly seen node (1 s per node with
        100,000 values), so fresh node ids made a node deaf."""
        now = self._clock()
        with self._lock:
            last = self._transferred.get(node.id)
            if last is not None and now - last < self.refresh_interval:
                return
            queue = self._transfer_queue
            if len(queue) >= TRANSFER_QUEUE:
                # Full: a newcomer from a less represented address takes the
                # place of one from the most represented (sybils on one
                # address kept honest newcomers from their keys).
                hosts = Counter(queued.address[0] for queued in queue.values())
                busiest, most = hosts.most_common(1)[0]
                if hosts[node.address[0]] + 1 < most:
                    given_up = next(i for i, q in queue.items() if q.address[0] == busiest)
                    del queue[given_up]
                    self._transferred.pop(given_up, None)  # the next refresh queues it again
            if len(queue) >= TRANSFER_QUEUE:
                skipped = True
            else:
                skipped = False
                self._transferred[node.id] = now
                self._transferred.move_to_end(node.id)
                if len(self._transferred) > TRANSFERRED_NODES:
                    self._transferred.popitem(last=False)
                queue[node.id] = node
                start = not self._transfer_scanning
                self._transfer_scanning = True
        if skipped:
            self.stats.incr("transfer-skipped")
        elif start:
            self._timers.schedule(0.0, self._transfer_scan)

    def _transfer_scan(self) -> None:
        """Timer thread: start a scan of the store for the queued nodes."""
        self._transfer_step(self._start_transfer_scan)

    def _start_transfer_scan(self) -> None:
        with self._lock:
            nodes = list(self._transfer_queue.values())
            self._transfer_queue.clear()
            if self.closed or not nodes:
                self._transfer_scanning = False
                return
        storage = self._storage
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
        self._transfer_slice(nodes, scan, 0, chosen, len(self.table) < K)

    def _transfer_step(self, step: Callable[..., None], *args: object) -> None:
        """Run one step of a scan; if it raises, end the scan (and start the
        next for the nodes queued meanwhile), so key transfer goes on."""
        try:
            step(*args)
        except Exception:
            self.stats.incr("transfer-error")
            log.exception("key transfer failed")
            self._timers.schedule(0.0, self._transfer_scan)

    def _transfer_slice(
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
        local = int.from_bytes(self.local_id, "big")
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
                    near = closest[key] = {n.id for n in self.table.closest(key, K)}
                if node_id in near:
                    chosen[node_id].append(value)
        if start + TRANSFER_SLICE < scan.size and not self.closed:
            rest = (nodes, scan, start + TRANSFER_SLICE, chosen, everything)
            self._timers.schedule(0.0, partial(self._transfer_step, self._transfer_slice, *rest))
            return
        for node in nodes:
            # Bounded batches at a bounded rate, never the whole store at once.
            batches = batch_values(chosen[node.id], self.transfer_batch_bytes)
            for i, batch in enumerate(batches):
                self._timers.schedule(
                    i * self.transfer_interval, partial(self._send_batch, node, batch)
                )
        # The nodes queued meanwhile, if any: in a callback of its own (a
        # direct call recursed once per scan while nodes kept coming).
        self._timers.schedule(0.0, self._transfer_scan)

    def _send_batch(self, node: Node, batch: tuple[Value, ...]) -> None:
        try:
            self.request(node.address, node.id, EventType.STORE, Store(batch), _ignore, _ignore)
        except ClosedError:
            return
        self.stats.incr("values-transferred", len(batch))

    def _refresh(self) -> None:
        """Periodic: ping contacts not heard from recently and candidates
        waiting for room; queue key transfer for contacts never served (the
        queue was full when they were new); sweep expired values."""
        if self.closed:
            return
        now = self._clock()
        for contact in self.table.stale(now, self.refresh_interval):
            self._ping(contact.id, contact.address)
        for contact in self.table.candidates_to_verify():
            self._prove(contact.id, contact.address)
        with self._lock:
            served = set(self._transferred)
        for contact in self.table.contacts():
            if contact.id not in served:
                self._transfer_keys(contact.node)
        self._storage.expire()  # guarded: a raise must not end the liveness checks
        with self._lock:
            if not self.closed:
                self._refresh_timer = self._timers.schedule(self.refresh_interval, self._refresh)

    def _ping(self, node_id: bytes, address: Address) -> None:
        with contextlib.suppress(ClosedError):
            self.request(address, node_id, EventType.PING, None, _ignore, _ignore)

    # -- the user's storage (user code: it may raise) ------------------------

    @property
    def storage(self) -> Storage:
        """The user's storage (as given; the engine calls it guarded)."""
        return self._storage.storage

    @storage.setter
    def storage(self, storage: Storage) -> None:
        self._storage = GuardedStorage(storage, partial(self.stats.incr, "storage-error"))

    def store_locally(self, value: Value) -> bool:
        """Our own copy of a value we Store; False if the storage refused or failed."""
        return self._storage.Set(value.key, value.value, value.created_ns, value.ttl_ns)

    def local_values(self, key: bytes, from_ns: int) -> list[Value]:
        """The values a Find takes from our own storage first; none if the
        storage fails, so the Find asks the network."""
        return self._storage.Get(key, from_ns)

    # -- operations ----------------------------------------------------------

    def bootstrap(
        self, addresses: list[Address], on_done: Callable[[Exception | None], None]
    ) -> None:
        """Join through ``addresses`` by a FIND_NODE lookup of our own id.
        ``on_done(None)`` on success, ``on_done(BootstrapError)`` if none answered."""
        _Bootstrap(self, addresses, on_done).start()

    def store(
        self,
        key: bytes,
        value: bytes,
        ttl_ns: int,
        on_done: Callable[[Exception | None], None],
    ) -> None:
        """Find the K closest nodes to ``key`` and store the value on them."""
        created = self._wall_clock_ns()
        _StoreOperation(self, Value(key, value, ttl_ns, created), on_done).start()

    def find(
        self,
        key: bytes,
        from_ns: int,
        on_value: Callable[[bytes], None],
        on_done: Callable[[Exception | None, list[bytes]], None],
        *,
        first_only: bool = False,
    ) -> None:
        """Look up ``key``: ``on_value`` once per distinct value, then ``on_done``.

        The lookup ends when the K closest nodes have answered (or failed), or,
        with ``first_only``, as soon as one node holding the key has given its
        whole answer (values other requests bring before then count too)."""
        _FindOperation(self, key, from_ns, on_value, on_done, first_only).start()


@dataclass(frozen=True, slots=True)
class _Scan:
    """A key transfer scan: ``size`` keys (or values) in all, and the values
    of the slice of ``TRANSFER_SLICE`` of them from a position."""

    size: int
    read: Callable[[int], list[Value]]


def _values_of(storage: GuardedStorage, keys: list[bytes]) -> list[Value]:
    return [value for key in keys for value in storage.Get(key)]


def _call(fn: Callable[..., object], *args: object) -> object:
    """Run a callback; log and swallow what it raises (it must not kill a thread)."""
    try:
        return fn(*args)
    except Exception:
        log.exception("callback %r raised", fn)
        return None


def _ignore(*_: object) -> bool:
    return True


def _discard(_: object) -> None:
    pass


def _send_nothing(datagrams: list[bytes], address: Address) -> None:
    raise OSError("the node is closed")


def _mismatch(request: _Request | None, event: Event, source: Address) -> str | None:
    """Why a response cannot answer ``request`` (a counter name), or None."""
    if request is None:
        return "drop-unsolicited-response"
    if request.address != source or (
        request.node_id is not None and request.node_id != event.sender
    ):
        return "drop-spoofed-response"  # D14: only from where we asked, by whom we asked
    if event.type is not request.kind:
        return "drop-wrong-response-type"
    return None


class _Operation:
    """A Store, Find or bootstrap in progress, ending exactly once.

    User callbacks go through ``post`` and ``flush``: they are queued under
    the operation's lock and run outside it by one thread at a time, in order,
    so a Find's values always come before its end and never concurrently.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.lock = threading.Lock()
        self.finished = False
        self._outbox: list[Callable[[], None]] = []
        self._flushing = False

    def post(self, fn: Callable[[], None]) -> None:
        """Queue a callback; call with ``self.lock`` held."""
        self._outbox.append(fn)

    def flush(self) -> None:
        with self.lock:
            if self._flushing:
                return
            self._flushing = True
        while True:
            with self.lock:
                batch, self._outbox = self._outbox, []
                if not batch:
                    self._flushing = False
                    return
            for fn in batch:
                _call(fn)

    def register(self) -> bool:
        """Join the engine's running operations (so Close ends it); if the
        engine is already closed, end at once with ClosedError."""
        if self.engine._register(self):
            return True
        self.finish(ClosedError("the node was closed"))
        return False

    def finish(self, error: Exception | None) -> None:
        """End the operation (once); later calls do nothing."""
        with self.lock:
            if self.finished:
                return
            self.finished = True
            self.post(lambda: self.report(error))
        self.engine._unregister(self)
        self.flush()

    def report(self, error: Exception | None) -> None:
        raise NotImplementedError


class _LookupOperation(_Operation):
    """Drives a ``Lookup``: keeps up to alpha requests in flight until done."""

    kind = EventType.FIND_NODE

    def __init__(self, engine: Engine, target: bytes, *, alpha: int = ALPHA) -> None:
        super().__init__(engine)
        self.target = target
        self.lookup = Lookup(engine.local_id, target, alpha=alpha)
        self.completing = False

    def payload(self) -> Payload:
        return FindNode(key=self.target)

    def seed(self) -> None:
        """Start from the K closest nodes of the routing table."""
        with self.lock:
            self.lookup.add(self.engine.table.closest(self.target, K))

    def drive(self) -> None:
        with self.lock:
            if self.finished or self.completing:
                return
            # next() hands out nothing once the lookup is done, so asking it
            # first spares the check of done while there is work to hand out.
            to_query = self.lookup.next()
            done = not to_query and self.lookup.done and self.ready()
            self.completing = done  # only one thread may complete
        if done:
            self.complete()
            return
        for node in to_query:
            self.query(node)

    def ready(self) -> bool:
        """Whether the lookup may end now (subclasses wait for more)."""
        return True

    def query(self, node: Node) -> None:
        def on_response(event: Event, source: Address) -> bool:
            finished = self.on_response(node, event, source)
            self.drive()
            return finished

        def on_failure(error: Exception) -> None:
            with self.lock:
                self.lookup.failed(node.id)
            self.drive()

        self.send_query(node, on_response, on_failure)

    def send_query(
        self,
        node: Node,
        on_response: Callable[[Event, Address], bool],
        on_failure: Callable[[Exception], None],
    ) -> None:
        """Send this lookup's request to ``node``, and mark it stalled if it
        has not answered after ``stall_after`` seconds."""
        try:
            self.engine.request(
                node.address,
                node.id,
                self.kind,
                self.payload(),
                on_response,
                on_failure,
                on_stall=lambda: self.stalled(node),
            )
        except ClosedError as error:
            self.finish(error)

    def stalled(self, node: Node) -> None:
        with self.lock:
            self.lookup.stalled(node.id)
        self.drive()

    def on_response(self, node: Node, event: Event, source: Address) -> bool:
        payload = event.payload
        nodes = payload.nodes if isinstance(payload, FindNode | FindValue) else ()
        with self.lock:
            self.lookup.answered(node.id)
            self.lookup.add(usable_nodes(nodes, event.sender, source))
        return True

    def complete(self) -> None:
        raise NotImplementedError


def usable_nodes(nodes: Iterable[Node], sender: bytes, source: Address) -> list[Node]:
    """Nodes from a response, with the reference's 0.0.0.0 self-entry repaired
    from the datagram's source and other 0.0.0.0 entries dropped (5.3, D16).
    At most K: an honest node sends no more, and a hostile one must not fill
    a lookup with hundreds of made-up nodes to wait for."""
    out: list[Node] = []
    for node in nodes:
        if len(out) == K:
            break
        host, port = node.address
        if host == "0.0.0.0" or port == 0:
            if node.id != sender or port == 0:
                continue
            node = Node(node.id, (source[0], port))
        out.append(node)
    return out


class _Bootstrap(_LookupOperation):
    def __init__(
        self,
        engine: Engine,
        addresses: list[Address],
        on_done: Callable[[Exception | None], None],
    ) -> None:
        # New() waits for this lookup, so it asks all K candidates of a round
        # at once: the same requests as alpha = 3, in a third of the rounds.
        super().__init__(engine, engine.local_id, alpha=K)
        self.addresses = addresses
        self.on_done = on_done
        self.answered = 0
        self.failed = 0

    def start(self) -> None:
        if not self.register():
            return
        if not self.addresses:
            self.finish(None)
            return
        for address in self.addresses:
            try:
                self.engine.request(
                    address,
                    None,
                    EventType.FIND_NODE,
                    FindNode(key=self.target),
                    self.on_entry_response,
                    self.on_entry_failure,
                    retries=BOOTSTRAP_RETRIES,
                )
            except ClosedError as error:
                self.finish(error)
                return

    def ready(self) -> bool:
        return self.answered > 0

    def on_entry_response(self, event: Event, source: Address) -> bool:
        payload = event.payload
        nodes = payload.nodes if isinstance(payload, FindNode) else ()
        with self.lock:
            self.answered += 1
            self.lookup.add([Node(event.sender, source)], State.ANSWERED)
            self.lookup.add(usable_nodes(nodes, event.sender, source))
        self.drive()
        return True

    def on_entry_failure(self, error: Exception) -> None:
        with self.lock:
            self.failed += 1
            hopeless = self.failed == len(self.addresses)
        if hopeless:
            tried = ", ".join(f"{host}:{port}" for host, port in self.addresses)
            self.finish(BootstrapError(f"no bootstrap node answered ({tried}): {error}"))

    def complete(self) -> None:
        self.finish(None)

    def report(self, error: Exception | None) -> None:
        self.on_done(error)


class _FindOperation(_LookupOperation):
    kind = EventType.FIND_VALUE

    def __init__(
        self,
        engine: Engine,
        key: bytes,
        from_ns: int,
        on_value: Callable[[bytes], None],
        on_done: Callable[[Exception | None, list[bytes]], None],
        first_only: bool,
    ) -> None:
        # A first-value lookup asks one node first: the closest known node
        # usually holds the key, and the other alpha - 1 answers would come
        # too late to matter. It asks alpha at once after a miss, a failure,
        # or no answer within the hedge delay (Engine.hedge_delay).
        hedge = engine.hedge_delay() if first_only else None
        super().__init__(engine, key, alpha=1 if hedge is not None else ALPHA)
        self._hedge = hedge
        self._hedge_timer: object = None
        self.first_only = first_only
        self.from_ns = from_ns
        self.on_value = on_value
        self.on_done = on_done
        self.values: list[bytes] = []
        self._seen: set[bytes] = set()
        self._partial = 0  # requests whose split answer is still arriving

    def payload(self) -> Payload:
        return FindValue(key=self.target, from_ns=self.from_ns)

    def start(self) -> None:
        if not self.register():
            return
        local = self.engine.local_values(self.target, self.from_ns)
        if local:
            with self.lock:
                self._deliver(value.value for value in local)
            self.finish(None)
            return
        self.seed()
        if self._hedge is not None:
            self._hedge_timer = self.engine._timers.schedule(self._hedge, self._hedge_expired)
        self.drive()

    def _widen(self) -> None:
        """Ask up to alpha nodes at once from now on (after a hedge delay,
        a miss or a failure); call with the lock held, then ``drive``."""
        self.lookup.alpha = ALPHA

    def _hedge_expired(self) -> None:
        with self.lock:
            if self.lookup.alpha == ALPHA:
                return
            self._widen()
        self.drive()

    def _deliver(self, values: Iterable[bytes]) -> None:
        """Queue new distinct values for the user; call with the lock held.
        Values that come after the end (answers still in flight) are dropped."""
        if self.finished:
            return
        for data in values:
            if data not in self._seen:
                self._seen.add(data)
                self.values.append(data)
                self.post(lambda data=data: self.on_value(data))  # type: ignore[misc]

    def ready(self) -> bool:
        return self._partial == 0

    def drive(self) -> None:
        with self.lock:
            done = self.first_only and bool(self.values) and self._partial == 0
            if done:
                if self.finished or self.completing:
                    return
                self.completing = True
        if done:
            self.complete()
        else:
            super().drive()

    def query(self, node: Node) -> None:
        received: set[bytes] = set()  # distinct: a duplicated event counts once

        def on_response(event: Event, source: Address) -> bool:
            payload = event.payload
            values: list[Value] = []
            if isinstance(payload, FindValue) and payload.values:
                # Values under another key are not what was asked for.
                values = [value for value in payload.values if value.key == self.target]
                if len(values) < len(payload.values):
                    self.engine.stats.incr("drop-wrong-key")
            if isinstance(payload, FindValue) and values:
                with self.lock:
                    was_partial = bool(received)  # an earlier event left more to come
                    if not was_partial:
                        self.lookup.answered(node.id)
                    received.update(value.value for value in values)
                    finished = len(received) >= payload.found
                    self._partial += int(not finished) - int(was_partial)
                    self._deliver(value.value for value in values)
                self.flush()
            else:
                finished = self.on_response(node, event, source)
                with self.lock:
                    if received:  # a split answer that ended without its rest
                        self._partial -= 1
                    self._widen()  # a miss: this node does not hold the key
            self.drive()
            return finished

        def on_failure(error: Exception) -> None:
            with self.lock:
                if received:
                    self._partial -= 1  # the rest of a split answer never came
                else:
                    self.lookup.failed(node.id)
                self._widen()
            self.drive()

        self.send_query(node, on_response, on_failure)

    def complete(self) -> None:
        self.finish(None)  # report() tells found from not found

    def report(self, error: Exception | None) -> None:
        if self._hedge_timer is not None:
            self.engine._timers.cancel(self._hedge_timer)
        if error is None and not self.values:
            error = NotFoundError(self.target, self.lookup.queried)
        self.on_done(error, list(self.values))


class _StoreOperation(_LookupOperation):
    def __init__(
        self, engine: Engine, value: Value, on_done: Callable[[Exception | None], None]
    ) -> None:
        super().__init__(engine, value.key)
        self.value = value
        self.on_done = on_done
        self.tried = 0
        self.acknowledged = 0
        self.failures = 0
        self.needed = 0

    def start(self) -> None:
        if not self.register():
            return
        self.seed()
        self.drive()

    def complete(self) -> None:
        """The lookup is done: store on the K closest (this node included if
        it is one of them) and wait for a majority to acknowledge."""
        engine = self.engine
        key = self.target
        with self.lock:  # late answers may still be adding to the lookup
            targets = self.lookup.closest(K)
        local = len(targets) < K or distance(engine.local_id, key) < distance(targets[-1].id, key)
        if local:
            targets = targets[: K - 1]
        value = self.value
        stored = local and engine.store_locally(value)
        with self.lock:
            self.tried = len(targets) + local
            self.needed = self.tried // 2 + 1
            if not targets and self.lookup.queried:
                # Nodes are known but none answered: storing only here would
                # hide that the network is unreachable, so count them as tried.
                self.tried += self.lookup.queried
                self.failures += self.lookup.queried
                self.needed = self.tried // 2 + 1
            if stored:
                self.acknowledged += 1
            elif local:
                self.failures += 1
        self.check()
        payload = Store((value,))
        for node in targets:
            try:
                engine.request(
                    node.address,
                    node.id,
                    EventType.STORE,
                    payload,
                    self.on_ack,
                    self.on_nack,
                    retries=1,
                )
            except ClosedError as error:
                self.finish(error)
                return

    def on_ack(self, event: Event, source: Address) -> bool:
        with self.lock:
            self.acknowledged += 1
        self.check()
        return True

    def on_nack(self, error: Exception) -> None:
        with self.lock:
            self.failures += 1
        self.check()

    def check(self) -> None:
        with self.lock:
            if self.acknowledged >= self.needed:
                outcome: Exception | None = None
            elif self.tried - self.failures < self.needed:
                outcome = StoreError(self.target, self.tried, self.acknowledged, self.needed)
            else:
                return
        self.finish(outcome)

    def report(self, error: Exception | None) -> None:
        self.on_done(error)
