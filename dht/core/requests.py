"""The pending-request table: send, resend, stall, timeout, round trips.

A request waits here under its event id until its answer comes, it times
out (after ``retries`` resends), or the node closes. One table serves every
listener of a node: a reply may arrive on any of its sockets. An answer is
taken only from the address asked and, when the asked node's id is known,
with that sender id (D14); a STORE refusal comes under the complement of the
request's id (PROTOCOL.md 11.1). Each answer to a request sent once is a
round-trip sample (Karn: none from a resent request) for the node's
smoothed round trip and, through the routing table, the contact's own
(``roundtrip``). A request to a contact with a measured round trip waits
for that contact's retransmission timeout, at most ``timeout``, doubling
on each resend (RFC 6298, 5.5); to anyone else, ``timeout``.

Threading: ``request`` runs on any thread, answers on listener threads,
timeouts on the timer thread. A request is claimed under the lock before
its callback runs, so a timeout, an answer and a Close never end it twice;
no lock is held while a callback runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..errors import ClosedError, DHTError, RequestTimeout, StoreRefused, WrongNode
from ..wire.events import Address, Event, EventType, Payload
from ..wire.refusal import reasons, refusal_id
from . import nodelog
from .callbacks import call_safely
from .roundtrip import RoundTrip
from .sender import Sender
from .stats import Stats
from .timerwheel import Timers

log = nodelog.logger("dht.engine")

OnResponse = Callable[[Event, Address], bool]
"""Runs for each response event; returns True when no more are expected."""
OnFailure = Callable[[Exception], object]

_RESPONSE_TYPE = {EventType.PING: EventType.PONG}


class Request:
    """One request awaiting its answer."""

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
        "rtt",
        "sent",
        "stall",
        "timer",
        "wait",
    )

    def __init__(
        self,
        event: Event,
        address: Address,
        node_id: bytes | None,
        on_response: OnResponse,
        on_failure: OnFailure,
        retries: int,
        on_stall: Callable[[], object] | None,
        wait: float,
    ) -> None:
        self.event = event
        self.kind = _RESPONSE_TYPE.get(event.type, event.type)
        self.address = address
        self.node_id = node_id
        self.on_response = on_response
        self.on_failure = on_failure
        self.retries = retries
        self.on_stall = on_stall
        self.sent = 0.0  # the node's clock, seconds: the last send
        self.wait = wait
        """Seconds this send waits for its answer."""
        self.stall = 0.0
        """Seconds after which it has stalled (set when it is sent)."""
        self.rtt: float | None = None
        """Seconds from send to answer, once answered, if a sample."""
        self.measurable = True
        """Whether an answer gives a round-trip sample: not after a resend,
        which it may answer either send of (Karn), nor for later parts."""
        self.timer: object = None
        self.answered = False
        """Whether part of a split answer came (the rest may still fail)."""


class PendingRequests:
    """A node's requests in flight. ``on_unanswered(node_id, address)`` runs
    when a request to a known node times out or is answered by another
    node (the routing table's ``failed``)."""

    def __init__(
        self,
        local_id: bytes,
        *,
        sender: Sender,
        timers: Timers,
        clock: Callable[[], float],
        new_id: Callable[[], bytes],
        stats: Stats,
        timeout: float,
        stall_after: float | None,
        max_pending: int,
        on_unanswered: Callable[[bytes, Address], object],
        rto_of: Callable[[bytes, Address], float | None] | None = None,
    ) -> None:
        self.local_id = local_id
        self._sender = sender
        self._timers = timers
        self._clock = clock
        self._new_id = new_id
        self._stats = stats
        self.timeout = timeout
        """Seconds a request waits for its answer, per send."""
        self.stall_after = stall_after if stall_after is not None else timeout / 4
        """Seconds after which a request without an answer has stalled."""
        self.max_pending = max_pending
        self._on_unanswered = on_unanswered
        self._rto_of = rto_of
        """The retransmission timeout of a contact at an address, if measured
        (the routing table's ``rto``)."""
        self._lock = threading.Lock()  # guards _pending and closed
        self._pending: dict[bytes, Request] = {}
        self.closed = False
        self.round_trip: RoundTrip | None = None
        """Round trips to every peer together (the hedge delay's measure)."""

    @property
    def smoothed_rtt(self) -> float | None:
        """Seconds from request to response, averaged over every peer."""
        round_trip = self.round_trip
        return None if round_trip is None else round_trip.srtt

    @smoothed_rtt.setter
    def smoothed_rtt(self, value: float | None) -> None:
        self.round_trip = None if value is None else RoundTrip(value)

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def awaits(self, event_id: bytes) -> bool:
        """Whether ``event_id`` is that of a request awaiting its answer (any
        thread: one dict lookup, atomic under the GIL)."""
        return event_id in self._pending

    def close(self) -> None:
        """End every pending request once with ``ClosedError``, on the
        calling thread. Idempotent."""
        with self._lock:
            self.closed = True
            pending = list(self._pending.values())
            self._pending.clear()
        error = ClosedError("the node was closed")
        for request in pending:
            self._timers.cancel(request.timer)
            call_safely(request.on_failure, error)

    def _stranger_stall(self) -> float:
        """When a request to a node without a measured round trip has
        stalled: after the retransmission timeout of all peers together, at
        most ``stall_after``. After a crash, most nodes listed in answers
        are dead strangers, each holding a lookup up for this long."""
        round_trip = self.round_trip
        if round_trip is None:
            return self.stall_after
        return min(self.stall_after, round_trip.rto())

    def hedge_delay(self) -> float | None:
        """How long a first-value lookup waits for its single first query
        before asking more nodes: four smoothed round trips, at most
        ``stall_after``. None before any round trip was measured."""
        srtt = self.smoothed_rtt
        return None if srtt is None else min(4 * srtt, self.stall_after)

    # -- sending ------------------------------------------------------------

    def request(
        self,
        address: Address,
        node_id: bytes | None,
        event_type: EventType,
        payload: Payload | None,
        on_response: OnResponse,
        on_failure: OnFailure,
        *,
        retries: int = 0,
        on_stall: Callable[[], object] | None = None,
    ) -> None:
        """Send a request; ``on_response(event, source)`` runs for each response
        event (return True when no more are expected), ``on_failure(error)``
        once if it times out (after ``retries`` resends) or cannot be sent.
        ``on_stall()``, if given, runs once when no answer has come after
        ``stall_after`` seconds, or sooner, after the retransmission timeout
        of every peer's round trips together, for a node not measured yet
        (the request still waits for its timeout).
        Raises ``ClosedError`` once the node is closed."""
        event = Event(self._new_id(), self.local_id, event_type, False, payload)
        wait = self.timeout
        stall = self.stall_after
        if node_id is not None and self._rto_of is not None:
            rto = self._rto_of(node_id, address)
            if rto is not None:
                wait = min(wait, rto)
            else:
                stall = self._stranger_stall()
        request = Request(event, address, node_id, on_response, on_failure, retries, on_stall, wait)
        request.stall = stall
        if stall >= wait:
            request.on_stall = on_stall = None
        timers = self._timers
        with self._lock:
            if self.closed:
                raise ClosedError("the node was closed")
            full = len(self._pending) >= self.max_pending
            if not full:
                self._pending[event.id] = request
                # One timer per request: first the stall, then the timeout.
                if on_stall is None:
                    request.timer = timers.schedule(wait, lambda: self._expired(request))
                else:
                    request.timer = timers.schedule(stall, lambda: self._stalled(request))
        if full:
            self._stats.incr("request-refused-pending-cap")
            error = DHTError(f"{self.max_pending} requests are already pending")
            timers.schedule(0.0, lambda: _discard(call_safely(on_failure, error)))
            return
        self._send(request)

    def _send(self, request: Request) -> None:
        request.sent = self._clock()
        try:
            self._sender.send(request.event, request.address)
        except OSError as error:
            # A datagram the kernel refused (a firewall, a full buffer) is a
            # lost datagram: the timeout retries or reports it, once.
            self._stats.incr("send-failed")
            log.debug("send to %s failed: %s", request.address, error)
        except DHTError as error:
            if not self._claim(request):
                return
            self._stats.incr("send-failed")
            # Report from the timer thread, not re-entrantly from the caller (D23).
            failure: Exception = error
            self._timers.schedule(0.0, lambda: _discard(call_safely(request.on_failure, failure)))

    def _claim(self, request: Request) -> bool:
        """Take ``request`` out of the table, if it is still there, and
        cancel its timer: whoever claims it ends it."""
        with self._lock:
            if self._pending.get(request.event.id) is not request:
                return False
            del self._pending[request.event.id]
        self._timers.cancel(request.timer)
        return True

    def _stalled(self, request: Request) -> None:
        with self._lock:
            if self._pending.get(request.event.id) is not request:
                return
            request.timer = self._timers.schedule(
                request.wait - request.stall, lambda: self._expired(request)
            )
        on_stall, request.on_stall = request.on_stall, None
        if on_stall is not None:
            call_safely(on_stall)

    def _expired(self, request: Request) -> None:
        with self._lock:
            if self._pending.get(request.event.id) is not request:
                return
            if request.retries > 0 and not self.closed:
                request.retries -= 1
                request.wait = min(2 * request.wait, self.timeout)  # RFC 6298, 5.5
                request.timer = self._timers.schedule(request.wait, lambda: self._expired(request))
                resend = True
            else:
                del self._pending[request.event.id]
                resend = False
        if resend:
            request.measurable = False
            self._stats.incr("request-retried")
            self._send(request)
            return
        self._stats.incr("request-timeout")
        if request.node_id is not None and not request.answered:
            self._on_unanswered(request.node_id, request.address)
        call_safely(request.on_failure, RequestTimeout(request.address, request.wait))

    # -- answers ------------------------------------------------------------

    def claim_answer(self, event: Event, source: Address, now: float) -> Request | None:
        """The request ``event`` answers, taken out of the table, or None
        (the reason counted). A refusal is matched under its complement id.
        An answer from the asked address under another id ends the request
        at once with ``WrongNode``: the one asked is not there."""
        with self._lock:
            request = self._pending.get(event.id)
            if request is None and event.type is EventType.STORE:
                # A refusal comes under the complement of our STORE's id.
                request = self._pending.get(refusal_id(event.id))
                if request is not None and request.kind is not EventType.STORE:
                    request = None
            drop = _mismatch(request, event, source)
            if drop is None or drop == "answer-wrong-node":
                assert request is not None
                del self._pending[request.event.id]
        if drop is not None:
            self._stats.incr(drop)
            if drop == "answer-wrong-node":
                assert request is not None
                self._wrong_node(request, event.sender, source)
            return None
        assert request is not None
        self._timers.cancel(request.timer)
        if request.measurable:
            request.rtt = rtt = now - request.sent
            round_trip = self.round_trip  # a race between listeners only blurs the average
            if round_trip is None:
                self.round_trip = RoundTrip(rtt)
            else:
                round_trip.add(rtt)
        return request

    def answered(self, request: Request, event: Event, source: Address) -> None:
        """Run the callback of a claimed ``request`` for its answer ``event``."""
        if event.id != request.event.id:  # under the complement: a refusal
            self._stats.incr("store-refusals-received")
            call_safely(request.on_failure, StoreRefused(source, reasons(event)))
        elif call_safely(request.on_response, event, source) is False:
            self._await_rest(request)

    def _wrong_node(self, request: Request, answered: bytes, source: Address) -> None:
        """The node at a request's address answered under another id: the
        one we asked is not there (it moved, or never was: made up by
        whoever listed it). End the (claimed) request now rather than at its
        timeout; the answerer, whoever it is, is not believed."""
        self._timers.cancel(request.timer)
        assert request.node_id is not None
        self._on_unanswered(request.node_id, request.address)
        call_safely(request.on_failure, WrongNode(source, request.node_id, answered))

    def _await_rest(self, request: Request) -> None:
        """Pend again a request whose answer has more events to come: until
        ``stall_after`` passes without the next one, and no longer than its
        original timeout. A ``found`` count that never arrives must not hold
        a Find for the whole timeout, nor a slow trickle of parts extend it."""
        request.measurable = False  # later parts are no round-trip samples
        request.answered = True
        with self._lock:
            if not self.closed:
                self._pending[request.event.id] = request
                left = max(request.sent + self.timeout - self._clock(), 0.0)
                request.timer = self._timers.schedule(
                    min(left, self.stall_after), lambda: self._expired(request)
                )
                return
        call_safely(request.on_failure, ClosedError("the node was closed"))


def _discard(_: object) -> None:
    pass


def _mismatch(request: Request | None, event: Event, source: Address) -> str | None:
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
