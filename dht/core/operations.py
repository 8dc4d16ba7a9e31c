"""Store, Find and bootstrap: the operations a node runs over the network.

Each drives a ``Lookup`` (the state machine, no I/O) through the node's
pending requests (``context.Context``: the parts of the node it uses), and
ends exactly once: Close ends it with ``ClosedError`` through
``Running.close``. User callbacks run through a serial outbox
(``Operation``), never under a lock, on whichever thread moved the operation on: a listener
thread (a response), the timer thread (a timeout) or the caller's (start).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable
from functools import partial

from ..errors import BootstrapError, ClosedError, NotFoundError, StoreError, StoreRefused
from ..keys import ALPHA, KEY_BITS, K, distance
from ..wire.events import (
    MAX_VALUE_SIZE,
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
from .callbacks import call_safely
from .context import Context
from .diversity import implausible
from .lookup import Lookup, State
from .shares import LOCAL

RESEEDS = 2
"""Times a lookup no node answered asks the routing table for more."""
BOOTSTRAP_RETRIES = 2
"""Resends of the FIND_NODE to each bootstrap address (one lost datagram
must not make New fail)."""


class Operation:
    """A Store, Find or bootstrap in progress, ending exactly once.

    User callbacks go through ``post`` and ``flush``: they are queued under
    the operation's lock and run outside it by one thread at a time, in order,
    so a Find's values always come before its end and never concurrently.
    """

    def __init__(self, context: Context) -> None:
        self.context = context
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
                call_safely(fn)

    def register(self) -> bool:
        """Join the node's running operations (so Close ends it); if the
        node is already closed, end at once with ClosedError."""
        if self.context.running.add(self):
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
        self.context.running.discard(self)
        self.flush()

    def report(self, error: Exception | None) -> None:
        raise NotImplementedError


class LookupOperation(Operation):
    """Drives a ``Lookup``: keeps up to alpha requests in flight until done."""

    kind = EventType.FIND_NODE

    def __init__(
        self, context: Context, target: bytes, *, alpha: int = ALPHA, holders: bool = False
    ) -> None:
        """``holders``: any of the K closest nodes will do (a Find's value
        is on each), so the faster of them are asked first."""
        super().__init__(context)
        self.target = target
        now = context.clock()
        self.started = now
        self.network_size = context.table.network_size(now)
        """About how many nodes the network has, when the lookup began."""
        self.lookup = Lookup(
            context.local_id,
            target,
            alpha=alpha,
            group=context.diversity.group,
            # Not a bound method: the lookup must not hold its operation (a cycle).
            round_trip=partial(round_trip, context)
            if context.schedule.latency_aware_routing
            else None,
            # The K-th closest of N random ids is about K * 2^160 / N away.
            holders_within=(K << KEY_BITS) // self.network_size if holders else 0,
        )
        self.completing = False
        context.table.looked_up(target, now)
        self._skip_suspects = context.table.mostly_live(now)
        """Whether contacts that failed us lately are not asked again on
        another node's word (after a crash, every answer still lists the
        dead); not when most did (``RoutingTable.mostly_live``)."""
        self._reseeds = 0

    def payload(self) -> Payload:
        return FindNode(key=self.target)

    def seed(self) -> None:
        """Start from the K closest nodes of the routing table (2K where the
        diversity limits apply: the window then fills from other networks
        while one network's many candidates wait their turn)."""
        n = 2 * K if self.context.diversity.limiting else K
        with self.lock:
            self.lookup.add(self.context.table.closest(self.target, n))

    def drive(self) -> None:
        with self.lock:
            if self.finished or self.completing:
                return
            # next() hands out nothing once the lookup is done, so asking it
            # first spares the check of done while there is work to hand out.
            to_query = self.lookup.next()
            done = not to_query and self.lookup.done and self.ready()
            if done and self._reseed():
                to_query = self.lookup.next()
                done = not to_query
            self.completing = done  # only one thread may complete
        if done:
            self.complete()
            return
        for node in to_query:
            self.query(node)

    def ready(self) -> bool:
        """Whether the lookup may end now (subclasses wait for more)."""
        return True

    def _reseed(self) -> bool:
        """A lookup that no node answered asks the routing table's next
        closest contacts, up to ``RESEEDS`` times: the closest can all be
        one attacker's ids that answer pings and nothing else (a flood's
        sources outnumbered the honest contacts), and the honest ones just
        behind them went unasked. Call with the lock held; whether any
        candidate was added."""
        lookup = self.lookup
        if self._reseeds == RESEEDS or lookup.closest(1):
            return False
        self._reseeds += 1
        known = lookup.queried + 2 * K
        return lookup.add(self.context.table.closest(self.target, known)) > 0

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
            self.context.requests.request(
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
        listed = self.listed(event, source)
        with self.lock:
            if listed is None:  # a liar: it is no target of ours either
                self.lookup.failed(node.id)
            else:
                self.lookup.answered(node.id)
                self.lookup.add(listed)
        if listed is None:
            self.context.table.failed(node.id, node.address)
        return True

    def listed(self, event: Event, source: Address) -> list[Node] | None:
        """The nodes an answer lists, usable; None if it places ids closer
        to the target than the network's size allows (``diversity``)."""
        payload = event.payload
        nodes = payload.nodes if isinstance(payload, FindNode | FindValue) else ()
        listed = usable_nodes(nodes, event.sender, source)
        if self._skip_suspects:
            suspect = self.context.table.is_suspect
            listed = [node for node in listed if not suspect(node.id)]
        if implausible(listed, self.target, self.network_size):
            self.context.stats.incr("drop-implausible-answer")
            return None
        return listed

    def complete(self) -> None:
        raise NotImplementedError

    def recorded(self, kind: str, error: Exception | None) -> None:
        """Count the lookup's end in the node's stats (``report`` calls it)."""
        elapsed = self.context.clock() - self.started
        self.context.stats.lookup_done(kind, elapsed, self.lookup.queried, error is None)


def round_trip(context: Context, node_id: bytes) -> float:
    """A lookup candidate's round trip in seconds: its own if it is a
    measured contact, else the node's average (a stranger is taken as typical)."""
    rtt = context.table.round_trip(node_id)
    if rtt is None:
        rtt = context.requests.smoothed_rtt
    return 0.0 if rtt is None else rtt


def usable_nodes(nodes: Iterable[Node], sender: bytes, source: Address) -> list[Node]:
    """Nodes from a response, with the reference's 0.0.0.0 self-entry repaired
    from the datagram's source and other 0.0.0.0 entries dropped (PROTOCOL.md 5.3, D16).
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


class Bootstrap(LookupOperation):
    def __init__(
        self,
        context: Context,
        addresses: list[Address],
        on_done: Callable[[Exception | None], None],
    ) -> None:
        # New() waits for this lookup, so it asks all K candidates of a round
        # at once: the same requests as alpha = 3, in a third of the rounds.
        super().__init__(context, context.local_id, alpha=K)
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
                self.context.requests.request(
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
        listed = self.listed(event, source)
        with self.lock:
            self.answered += 1
            self.lookup.add([Node(event.sender, source)], State.ANSWERED)
            self.lookup.add(listed or ())
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
        self.recorded("bootstrap", error)
        self.on_done(error)


class NodeLookup(LookupOperation):
    """A FIND_NODE lookup of ``target``: ``on_done(nodes)`` with the K
    closest that answered when it ends (none if the node closed). Bucket
    refresh runs it for what it teaches the routing table (``refresh``),
    replication for whom to send a key's values (``replication``)."""

    def __init__(
        self, context: Context, target: bytes, on_done: Callable[[list[Node]], None]
    ) -> None:
        super().__init__(context, target)
        self.on_done = on_done

    def start(self) -> None:
        if self.register():
            self.seed()
            self.drive()

    def complete(self) -> None:
        self.finish(None)

    def report(self, error: Exception | None) -> None:
        with self.lock:
            nodes = self.lookup.closest(K) if error is None else []
        self.on_done(nodes)


class FindOperation(LookupOperation):
    kind = EventType.FIND_VALUE

    def __init__(
        self,
        context: Context,
        key: bytes,
        from_ns: int,
        on_value: Callable[[bytes], None],
        on_done: Callable[[Exception | None, list[bytes]], None],
        first_only: bool,
    ) -> None:
        # A first-value lookup asks one node first: the closest known node
        # usually holds the key, and the other alpha - 1 answers would come
        # too late to matter. It asks alpha at once after a miss, a failure,
        # or no answer within the hedge delay (``PendingRequests.hedge_delay``).
        hedge = context.requests.hedge_delay() if first_only else None
        super().__init__(context, key, alpha=1 if hedge is not None else ALPHA, holders=first_only)
        self._hedge = hedge
        self._hedge_timer: object = None
        self.first_only = first_only
        self.from_ns = from_ns
        self.on_value = on_value
        self.on_done = on_done
        self.values: list[bytes] = []
        self._seen: set[bytes] = set()
        self._partial = 0  # requests whose split answer is still arriving
        self._bytes = 0  # of self.values
        self._full = False  # at max_find_values or max_find_bytes: it ends

    def payload(self) -> Payload:
        return FindValue(key=self.target, from_ns=self.from_ns)

    def start(self) -> None:
        if not self.register():
            return
        local = self.context.keeper.values(self.target, self.from_ns)
        if local:
            with self.lock:
                self._deliver(value.value for value in local)
            if self.first_only:
                self.finish(None)
                return
            # The K closest may hold others: a squatter's values here must
            # not hide the owner's elsewhere (D50).
            self.flush()
        self.seed()
        if self._hedge is not None:
            self._hedge_timer = self.context.timers.schedule(self._hedge, self._hedge_expired)
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
        """Queue new distinct values for the user, up to the Find's caps
        (reaching one ends it); call with the lock held. Values that come
        after the end (answers still in flight) are dropped."""
        if self.finished or self._full:
            return
        limits = self.context.limits
        for data in values:
            if data not in self._seen:
                if (
                    len(self.values) == limits.max_find_values
                    or self._bytes + len(data) > limits.max_find_bytes
                ):
                    self._full = True
                    self.context.stats.incr("find-full")
                    return
                self._seen.add(data)
                self.values.append(data)
                self._bytes += len(data)
                self.post(lambda data=data: self.on_value(data))  # type: ignore[misc]

    def _acceptable(self, values: Iterable[Value]) -> list[Value]:
        """The values of an answer a local store would keep: under the key
        asked for, of a valid size and ttl, alive, and as new as
        ``ValuesFrom`` asked (Go's answers carry no ``created``, D13: those
        are taken on trust for the last two)."""
        now = self.context.wall_clock_ns()
        good = []
        for value in values:
            created = value.created_ns
            if value.key != self.target:
                self.context.stats.incr("drop-wrong-key")
            elif (
                value.ttl_ns <= 0
                or len(value.value) > MAX_VALUE_SIZE
                or (created > 0 and (created + value.ttl_ns <= now or created < self.from_ns))
            ):
                self.context.stats.incr("drop-invalid-value")
            else:
                good.append(value)
        return good

    def ready(self) -> bool:
        return self._partial == 0

    def drive(self) -> None:
        with self.lock:
            done = self._full or (self.first_only and bool(self.values) and self._partial == 0)
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
                values = self._acceptable(payload.values)
            if isinstance(payload, FindValue) and values:
                with self.lock:
                    was_partial = bool(received)  # an earlier event left more to come
                    if not was_partial:
                        self.lookup.answered(node.id)
                    # Every value that came counts towards ``found``, kept or not.
                    received.update(value.value for value in payload.values)
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
            self.context.timers.cancel(self._hedge_timer)
        if error is None and not self.values:
            error = NotFoundError(
                self.target, self.lookup.queried, answered=self.lookup.answered_count
            )
        self.recorded("find", error)
        self.on_done(error, list(self.values))


class StoreOperation(LookupOperation):
    """Stores on the K closest nodes; succeeds when a majority of them kept
    the value. A node that answers with a refusal (``dht.wire.refusal``) or
    not at all did not keep it."""

    def __init__(
        self, context: Context, value: Value, on_done: Callable[[Exception | None], None]
    ) -> None:
        super().__init__(context, value.key)
        self.value = value
        self.on_done = on_done
        self.tried = 0
        self.kept = 0
        self.refused: Counter[str] = Counter()
        self.unanswered = 0
        self.needed = 0

    def start(self) -> None:
        if not self.register():
            return
        self.seed()
        self.drive()

    def complete(self) -> None:
        """The lookup is done: store on the K closest (this node included if
        it is one of them) and wait for a majority to keep it."""
        context = self.context
        key = self.target
        with self.lock:  # late answers may still be adding to the lookup
            targets = self.lookup.closest(K)
        local = len(targets) < K or distance(context.local_id, key) < distance(targets[-1].id, key)
        if local:
            targets = targets[: K - 1]
        value = self.value
        refusal = context.keeper.keep(value, LOCAL) if local else None
        with self.lock:
            self.tried = len(targets) + local
            if not targets and self.lookup.queried:
                # Nodes are known but none answered: storing only here would
                # hide that the network is unreachable, so count them as tried.
                self.tried += self.lookup.queried
                self.unanswered += self.lookup.queried
            self.needed = self.tried // 2 + 1
            if refusal is not None:
                self.refused[refusal] += 1
            elif local:
                self.kept += 1
        self.check()
        payload = Store((value,))
        for node in targets:
            try:
                context.requests.request(
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
            self.kept += 1
        self.check()
        return True

    def on_nack(self, error: Exception) -> None:
        with self.lock:
            if isinstance(error, StoreRefused):
                self.refused[error.reasons[0]] += 1
            else:
                self.unanswered += 1
        self.check()

    def check(self) -> None:
        with self.lock:
            failed = self.refused.total() + self.unanswered
            if self.kept >= self.needed:
                outcome: Exception | None = None
            elif self.tried - failed < self.needed:
                outcome = StoreError(
                    self.target,
                    self.tried,
                    self.kept,
                    self.needed,
                    dict(self.refused),
                    self.unanswered,
                )
            else:
                return
        self.finish(outcome)

    def report(self, error: Exception | None) -> None:
        self.recorded("store", error)
        self.on_done(error)
