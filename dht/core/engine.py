"""The protocol engine: what a node does, without sockets or threads.

The shell gives it a ``transport`` (send these datagrams to that address),
``timers`` (schedule/cancel a callback), a ``background`` runner for slow
jobs, clocks and an id source, and feeds it decoded events with
``receive``. It keeps the routing table, the pending requests (one table
shared by every listener: a reply may arrive on any socket), the running
operations (bootstrap, Store, Find: ``operations``) and the key transfer to
newly seen nodes (``transfer``).

Threading: ``receive`` runs on listener threads, timeouts on the timer
thread, scans of the storage on the worker thread, and ``store``, ``find``
and ``bootstrap`` on user threads, all concurrently. Shared state is guarded
by small locks; no lock is held while calling a user callback (operations
deliver through a serial outbox, see ``operations.Operation``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Protocol

from ..errors import ClosedError, DHTError, RequestTimeout, StoreRefused, WrongNode
from ..wire.codec import encode
from ..wire.events import Address, Event, EventType, Node, Payload, Value
from ..wire.framing import fragment, wire_size
from ..wire.refusal import reasons, refusal_id
from .amplification import FACTOR, AmplificationGuard
from .callbacks import call_safely, ignore
from .diversity import SMALLEST_ESTIMATE, Diversity
from .handler import answer
from .keeper import Keeper
from .limits import Limits
from .networks import network_of
from .operations import Bootstrap, FindOperation, Operation, StoreOperation
from .ratelimit import TokenBuckets
from .routing import Answered, RoutingTable
from .shares import LOCAL, UNPROVEN, Refusal
from .storage import GuardedStorage, Storage
from .transfer import KeyTransfer

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
_RESPONSE_TYPE = {EventType.PING: EventType.PONG}
DEFAULT_LIMITS = Limits()
SIZE_ESTIMATE_AGE = 1.0
"""Seconds a network-size estimate is used for before it is made again."""


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
        "answered",
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
        self.answered = False
        """Whether part of a split answer came (the rest may still fail)."""


class Engine:
    """One node's protocol logic. See the module docstring for threading."""

    def __init__(
        self,
        local_id: bytes,
        *,
        storage: Storage,
        transport: Transport,
        timers: Timers,
        background: Callable[[Callable[[], None]], None] | None = None,
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
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.local_id = local_id
        self.diversity = Diversity(trust_local=limits.trust_local_networks)
        self.table = RoutingTable(local_id, diversity=self.diversity)
        self.stats = Stats()
        self.limits = limits
        self.wall_clock_ns = wall_clock_ns
        """Nanoseconds since the Unix epoch: what values' times are read against."""
        self.storage = storage  # also sets guarded_storage and keeper
        self.timeout = timeout
        self.stall_after = stall_after if stall_after is not None else timeout / 4
        self.refresh_interval = refresh_interval
        self._transport = transport
        self.timers = timers

        def on_the_timer_thread(job: Callable[[], None]) -> None:
            timers.schedule(0.0, job)

        self.background = background or on_the_timer_thread
        """Runs a job that may block for long (a scan of the user's storage)
        later, off the timer thread: the shell's worker thread. Without
        one, on the timer thread (simulations in one thread)."""
        self.clock = clock
        self._new_id = new_id
        # Guards _pending, _operations, _verifying(_hosts), _sweep_queued and
        # closed (the amplification guard and the key transfer have their own).
        self._lock = threading.Lock()
        self._pending: dict[bytes, _Request] = {}
        self._operations: set[Operation] = set()
        self._verifying: set[bytes] = set()
        self._verifying_hosts: Counter[str] = Counter()  # of _verifying, per IP address
        self._moving: set[tuple[bytes, Address]] = set()  # contacts whose old address we ping
        self._network_size: tuple[float, int] | None = None  # (when, estimate)
        self.max_pending = max_pending
        self._new_node_level = logging.INFO if log_new_nodes else logging.DEBUG
        self.amplification = AmplificationGuard(
            amplification_limit, hold_for=timeout, global_rate=limits.unproven_answer_rate
        )
        self._answered = TokenBuckets(limits.answer_rate, 2 * limits.answer_rate)
        self._answered_lock = threading.Lock()
        self.transfer = KeyTransfer(
            self,
            batch_bytes=transfer_batch_bytes,
            interval=transfer_interval,
            rate=limits.transfer_rate,
        )
        self.closed = False
        self._sweep_queued = False
        self._refresh_timer: object = None
        self.smoothed_rtt: float | None = None
        """Seconds from request to response, averaged (RFC 6298's 1/8 gain)."""

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """Start the periodic liveness check."""
        self._refresh_timer = self.timers.schedule(self.refresh_interval, self._refresh)

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
            self.timers.cancel(self._refresh_timer)
        error = ClosedError("the node was closed")
        for operation in operations:
            operation.finish(error)
        for request in pending:
            self.timers.cancel(request.timer)
            call_safely(request.on_failure, error)
        # The transport is a method of the node that holds this engine: let
        # go of it, so a closed node is freed by reference counting, not
        # left in a cycle for the garbage collector.
        self._transport = _send_nothing

    def register_operation(self, operation: Operation) -> bool:
        """Add a running operation (so Close ends it); False once closed."""
        with self._lock:
            if self.closed:
                return False
            self._operations.add(operation)
            return True

    def unregister_operation(self, operation: Operation) -> None:
        with self._lock:
            self._operations.discard(operation)

    def awaits(self, event_id: bytes) -> bool:
        """Whether ``event_id`` is that of one of our requests awaiting its
        answer (any thread: one dict lookup, atomic under the GIL)."""
        return event_id in self._pending

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
                    request.timer = self.timers.schedule(
                        self.timeout, lambda: self._expired(request)
                    )
                else:
                    request.timer = self.timers.schedule(
                        self.stall_after, lambda: self._stalled(request)
                    )
        if full:
            self.stats.incr("request-refused-pending-cap")
            error = DHTError(f"{self.max_pending} requests are already pending")
            self.timers.schedule(0.0, lambda: _discard(call_safely(on_failure, error)))
            return
        self._send_request(request)

    def _send_request(self, request: _Request) -> None:
        request.sent = self.clock()
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
            self.timers.cancel(request.timer)
            self.stats.incr("send-failed")
            # Report from the timer thread, not re-entrantly from the caller (D23).
            failure: Exception = error
            self.timers.schedule(0.0, lambda: _discard(call_safely(request.on_failure, failure)))

    def _send(self, event: Event, address: Address) -> None:
        self._transport(fragment(event.id, encode(event)), address)

    def _stalled(self, request: _Request) -> None:
        with self._lock:
            if self._pending.get(request.event.id) is not request:
                return
            request.timer = self.timers.schedule(
                self.timeout - self.stall_after, lambda: self._expired(request)
            )
        on_stall, request.on_stall = request.on_stall, None
        if on_stall is not None:
            call_safely(on_stall)

    def _expired(self, request: _Request) -> None:
        with self._lock:
            if self._pending.get(request.event.id) is not request:
                return
            if request.retries > 0 and not self.closed:
                request.retries -= 1
                request.timer = self.timers.schedule(self.timeout, lambda: self._expired(request))
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
        if request.node_id is not None and not request.answered:
            self.table.failed(request.node_id, request.address)
        call_safely(request.on_failure, RequestTimeout(request.address, self.timeout))

    def hedge_delay(self) -> float | None:
        """How long a first-value lookup waits for its single first query
        before asking more nodes: four smoothed round trips, at most
        ``stall_after``. None before any round trip was measured."""
        srtt = self.smoothed_rtt
        return None if srtt is None else min(4 * srtt, self.stall_after)

    # -- receiving ----------------------------------------------------------

    def receive(self, event: Event, source: Address, size: int | None = None) -> None:
        """Handle one decoded event that arrived from ``source`` in ``size``
        bytes of datagrams (None: as many as our encoding of it takes)."""
        if event.sender == self.local_id:
            self.stats.incr("drop-own-id")
            return
        if event.response:
            self._on_response(event, source)
        else:
            if size is None:
                size = wire_size(len(encode(event)))
            self._on_request(event, source, size)

    def _on_response(self, event: Event, source: Address) -> None:
        # Claim the request before running its callback: a timeout on the
        # timer thread or a Close meanwhile then finds nothing to end twice.
        refused = False
        with self._lock:
            request = self._pending.get(event.id)
            if request is None and event.type is EventType.STORE:
                # A refusal comes under the complement of our STORE's id.
                request = self._pending.get(refusal_id(event.id))
                refused = request is not None and request.kind is EventType.STORE
                if not refused:
                    request = None
            drop = _mismatch(request, event, source)
            if drop is None or drop == "answer-wrong-node":
                assert request is not None
                del self._pending[request.event.id]
        if drop is not None:
            self.stats.incr(drop)
            if drop == "answer-wrong-node":
                assert request is not None
                self._wrong_node(request, event.sender, source)
            return
        assert request is not None
        self.timers.cancel(request.timer)
        now = self.clock()
        if request.measurable:
            rtt = now - request.sent
            srtt = self.smoothed_rtt  # a race between listeners only blurs the average
            self.smoothed_rtt = rtt if srtt is None else srtt + (rtt - srtt) / 8
        held = self.amplification.prove(source, now)
        if held:
            self._send_events(held, source)
        verdict = self.table.answered(event.sender, source, now)
        if verdict is Answered.ELSEWHERE:
            self._confirm_move(event.sender, source)
        if refused:
            self.stats.incr("store-refusals-received")
            call_safely(request.on_failure, StoreRefused(source, reasons(event)))
        elif call_safely(request.on_response, event, source) is False:
            self._await_rest(request)
        if verdict is Answered.NEW:
            log.log(
                self._new_node_level, "discovered node %s at %s:%d", event.sender.hex(), *source
            )
            self.transfer.offer(Node(event.sender, source))

    def _confirm_move(self, node_id: bytes, new: Address) -> None:
        """``node_id`` answered from ``new``, not from where we know it: move
        it there once its old address fails a ping, not before (D15).
        Anyone can list a node's id at their own address and answer as it."""
        old = self.table.address_of(node_id)
        if old is None or old == new:
            return
        with self._lock:
            if (node_id, new) in self._moving or len(self._moving) >= MAX_VERIFYING:
                return
            self._moving.add((node_id, new))

        def done(moved: bool) -> bool:
            with self._lock:
                self._moving.discard((node_id, new))
            if moved and self.table.move(node_id, old, new, self.clock()):
                self.stats.incr("contact-moved")
            return True

        try:
            self.request(
                old,
                node_id,
                EventType.PING,
                None,
                lambda *_: done(False),
                lambda _: done(True),
            )
        except ClosedError:
            done(False)

    def _wrong_node(self, request: _Request, answered: bytes, source: Address) -> None:
        """The node at a request's address answered under another id: the
        one we asked is not there (it moved, or never was: made up by
        whoever listed it). End the (claimed) request now rather than at its
        timeout; the answerer, whoever it is, is not believed."""
        self.timers.cancel(request.timer)
        assert request.node_id is not None
        self.table.failed(request.node_id, request.address)
        call_safely(request.on_failure, WrongNode(source, request.node_id, answered))

    def _await_rest(self, request: _Request) -> None:
        """Pend again a request whose answer has more events to come: until
        ``stall_after`` passes without the next one, and no longer than its
        original timeout. A ``found`` count that never arrives must not hold
        a Find for the whole timeout, nor a slow trickle of parts extend it."""
        request.measurable = False  # later parts are no round-trip samples
        request.answered = True
        with self._lock:
            if not self.closed:
                self._pending[request.event.id] = request
                left = max(request.sent + self.timeout - self.clock(), 0.0)
                request.timer = self.timers.schedule(
                    min(left, self.stall_after), lambda: self._expired(request)
                )
                return
        call_safely(request.on_failure, ClosedError("the node was closed"))

    def _on_request(self, event: Event, source: Address, size: int) -> None:
        sender = event.sender
        now = self.clock()
        # Only a FIND_VALUE answer can be large (the others are at most a
        # full FIND_NODE answer, bounded by the request rate), so only it
        # spends from the source's budget of answer bytes.
        account = None
        if event.type is EventType.FIND_VALUE:
            with self._answered_lock:
                account = self._answered.account(self.payer(source), now)
        # Neither is worth any work: answering costs far more than asking.
        if account is not None and account[0] <= 0:
            self.stats.incr("drop-answer-rate")
        elif self.amplification.spent(source, now):
            self.stats.incr("drop-amplification")
        else:
            sent = self._answer(event, source, FACTOR * size)
            if account is not None:
                # Without the lock: two listeners of this node racing on one
                # source's account lose an update at worst, a blur of it.
                account[0] -= sent
        # Answer first, then meet the sender: a joining node asks us and we
        # ping it back; with our answer already on its way, it knows us when
        # our ping arrives and need not ping us in turn.
        now = self.clock()
        if not self.table.touch(sender, source, now):
            if self.table.wants(sender):
                self._prove(sender, source)
            else:
                self.table.add_candidate(sender, source, now)

    def payer(self, source: Address) -> object:
        """Whose budget a source spends (answer bytes, key transfer's share):
        its IP address (ports cost nothing), or, where the diversity limits
        spare it (a trusted local network, whose cluster shares one IP), the
        address itself."""
        host = source[0]
        return source if self.diversity.group(host) is None else host

    def network_size(self) -> int:
        """About how many nodes the network has (``RoutingTable.size_estimate``),
        estimated again at most every ``SIZE_ESTIMATE_AGE`` seconds: every
        lookup asks for it. An estimate too small to judge answers by (one
        made while this node joined) is not kept: kept, it let the lookups of
        the next second take made-up ids next to their targets."""
        now = self.clock()
        estimate = self._network_size
        if estimate is None or now - estimate[0] >= SIZE_ESTIMATE_AGE:
            estimate = (now, self.table.size_estimate())
            if estimate[1] >= SMALLEST_ESTIMATE:
                self._network_size = estimate
        return estimate[1]

    def _answer(self, event: Event, source: Address, allowance: int) -> int:
        """Answer ``event``; the bytes sent. An answer to an unproven source
        beyond ``allowance`` bytes waits for the source's proof."""
        sender = event.sender
        requester = Node(sender, source)
        # A STORE's values are charged to the sender's network once its
        # address is proven; before that, anyone could be forging it (shares).
        network = UNPROVEN
        if event.type is EventType.STORE and self.amplification.is_proven(source):
            network = network_of(source[0])
        responses = answer(
            event,
            requester,
            self.table,
            self.keeper,
            self.stats.incr,
            network=network,
            max_answer_bytes=self.limits.max_answer_bytes,
        )
        sent = 0
        for index, response in enumerate(responses):
            try:
                datagrams = fragment(response.id, encode(response))
            except DHTError as error:
                self.stats.incr("send-failed")
                log.debug("cannot answer %s: %s", source, error)
                continue
            now = self.clock()
            size = sum(map(len, datagrams))
            verdict = self.amplification.allow(source, size, now, allowance=allowance - sent)
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
                return sent
            self._send_events([datagrams], source)
            sent += size
        return sent

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

    # -- liveness -----------------------------------------------------------

    def _refresh(self) -> None:
        """Periodic: ping contacts not heard from recently and candidates
        waiting for room; queue key transfer for live contacts never served (the
        queue was full when they were new); sweep expired values."""
        if self.closed:
            return
        now = self.clock()
        for contact in self.table.stale(now, self.refresh_interval):
            self._ping(contact.id, contact.address)
        for contact in self.table.candidates_to_verify():
            self._prove(contact.id, contact.address)
        served = self.transfer.served()
        for contact in self.table.contacts():
            if contact.id not in served and not contact.suspect:
                self.transfer.offer(contact.node)
        with self._lock:  # one sweep queued at a time, whatever the worker's backlog
            sweep = not self._sweep_queued
            self._sweep_queued = True
        if sweep:
            self.background(_weakly(self._sweep))
        with self._lock:
            if not self.closed:
                self._refresh_timer = self.timers.schedule(self.refresh_interval, self._refresh)

    def _sweep(self) -> None:
        """Background thread: the storage's expiry sweep (a user's may be
        slow; guarded: a raise must not end the liveness checks)."""
        with self._lock:
            self._sweep_queued = False
            if self.closed:
                return
        self.guarded_storage.expire()

    def _ping(self, node_id: bytes, address: Address) -> None:
        with contextlib.suppress(ClosedError):
            self.request(address, node_id, EventType.PING, None, ignore, ignore)

    # -- the user's storage (user code: it may raise) ------------------------

    @property
    def storage(self) -> Storage:
        """The user's storage, as given. The engine calls it through
        ``guarded_storage``, which counts and logs what it raises."""
        return self.guarded_storage.storage

    @storage.setter
    def storage(self, storage: Storage) -> None:
        self.guarded_storage = GuardedStorage(storage, partial(self.stats.incr, "storage-error"))
        limits = self.limits
        self.keeper = Keeper(
            self.guarded_storage,
            capacity=limits.max_store_bytes,
            values_per_key=limits.max_values_per_key,
            max_ttl_ns=limits.max_ttl_ns,
            clock_ns=self.wall_clock_ns,
        )

    def store_locally(self, value: Value) -> Refusal | None:
        """Keep our own copy of a value we Store: why it was refused, or None."""
        return self.keeper.keep(value, LOCAL)

    def local_values(self, key: bytes, from_ns: int) -> list[Value]:
        """The values a Find takes from our own storage first, networks
        interleaved as in an answer (``Keeper.values``); none if the storage
        fails, so the Find asks the network."""
        return self.keeper.values(key, from_ns)

    # -- operations ----------------------------------------------------------

    def bootstrap(
        self, addresses: list[Address], on_done: Callable[[Exception | None], None]
    ) -> None:
        """Join through ``addresses`` by a FIND_NODE lookup of our own id.
        ``on_done(None)`` on success, ``on_done(BootstrapError)`` if none answered."""
        Bootstrap(self, addresses, on_done).start()

    def store(
        self,
        key: bytes,
        value: bytes,
        ttl_ns: int,
        on_done: Callable[[Exception | None], None],
    ) -> None:
        """Find the K closest nodes to ``key`` and store the value on them."""
        created = self.wall_clock_ns()
        StoreOperation(self, Value(key, value, ttl_ns, created), on_done).start()

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
        FindOperation(self, key, from_ns, on_value, on_done, first_only).start()


def _weakly(method: Callable[[], None]) -> Callable[[], None]:
    """``method``, called only if its object still exists: a job waiting on
    the worker must not keep a closed node's engine alive."""
    ref = weakref.WeakMethod(method)

    def call() -> None:
        bound = ref()
        if bound is not None:
            bound()

    return call


def _discard(_: object) -> None:
    pass


def _send_nothing(datagrams: list[bytes], address: Address) -> None:
    raise OSError("the node is closed")


def _mismatch(request: _Request | None, event: Event, source: Address) -> str | None:
    """Why a response cannot answer ``request`` (a counter name), or None."""
    if request is None:
        return "drop-unsolicited-response"
    if request.address != source:
        return "drop-spoofed-response"  # D14: only from where we asked, by whom we asked
    if event.type is not request.kind:
        return "drop-wrong-response-type"
    if request.node_id is not None and request.node_id != event.sender:
        # Only the node at the address knows the request's unguessable id.
        return "answer-wrong-node"
    return None
