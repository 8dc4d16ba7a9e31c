"""What the lookups cost, watched from outside the engines.

The engine exposes no per-lookup counts, so the ``Tracer`` follows each
traced Find by what it causes, without touching the core and without
decoding anything itself (it sees the events each node's ``Receiver``
decoded on their way to the engine):

* *Requests*: the Find is started with its ``LookupTrace`` as the event
  queue's context; timers the engine sets meanwhile carry it, and the
  origin's answers to the Find's requests restore it while the engine
  handles them. Every event id the origin's id source hands out in that
  context is a request the Find caused. Those that reach a node are
  classified by what that node's Receiver decoded; one not of the Find's
  type (FIND_VALUE), e.g. a verification ping an answer prompted, is not
  counted; those lost on the way count as requests.
* *Hops*: the depth of a node in the lookup: 1 for a node the origin knew
  when the Find began, else one more than the depth of the node whose
  answer first listed it. A Find's hops are the depth of the first node
  whose answer carried the stored value (0 when the origin held it).

It also counts every decoded event by type, for the traffic figures.
"""

from __future__ import annotations

from collections.abc import Callable

from ..wire.events import Address, Event, EventType, FindValue
from ..wire.framing import MAX_DATAGRAM
from .events import EventQueue
from .node import Observer, SimNode

CLOSEST = "closest"
"""A Find that asks the K closest nodes (the default)."""
FIRST = "first-value"
"""A Find with ``first_only`` (FirstValue)."""


class LookupTrace:
    """One traced Find: what it cost and how it ended."""

    __slots__ = (
        "depth",
        "end",
        "hops",
        "index",
        "key",
        "kinds",
        "mode",
        "origin",
        "outcome",
        "start",
        "value",
    )

    def __init__(
        self, index: int, mode: str, key: bytes, value: bytes, origin: Address, start: float
    ) -> None:
        self.index = index
        self.mode = mode
        self.key = key
        self.value = value
        """The value stored under ``key``: success is finding it."""
        self.origin = origin
        self.start = start
        """Virtual seconds."""
        self.end: float | None = None
        self.outcome = "unfinished"
        """``found``, ``not-found`` (ended without the value), ``error``, or
        ``aborted`` (the origin left), once ended."""
        self.kinds: dict[bytes, int | None] = {}
        """Request ids it caused -> the event type their target decoded
        (None: never arrived)."""
        self.depth: dict[bytes, int] = {}
        """Node id -> depth in the lookup (see the module docstring)."""
        self.hops: int | None = None

    @property
    def requests(self) -> int:
        """FIND_VALUE requests it caused (those lost on the way included)."""
        return sum(kind is None or kind == EventType.FIND_VALUE for kind in self.kinds.values())

    @property
    def latency(self) -> float | None:
        """Seconds from the call to the end, once ended."""
        return None if self.end is None else self.end - self.start


class Tracer(Observer):
    """Counts decoded events and follows traced Finds (module docstring)."""

    def __init__(self, queue: EventQueue) -> None:
        self.queue = queue
        self._traces: dict[bytes, LookupTrace] = {}  # request id -> its Find
        self.events = [0] * (2 * (max(EventType) + 1))
        """Events decoded, by ``2 * type + response``."""
        self.event_bytes = [0] * len(self.events)
        """Their bytes on the wire, the same way."""
        self.event_datagrams = [0] * len(self.events)
        """Their datagrams, the same way (every one but an event's last is
        ``MAX_DATAGRAM`` bytes)."""

    def id_source(self, address: Address, new_id: Callable[[], bytes]) -> Callable[[], bytes]:
        """The event-id source for the node at ``address``: ``new_id``,
        noting the ids it hands out for a Find of that node being traced."""
        queue = self.queue
        traces = self._traces

        def traced_id() -> bytes:
            event_id = new_id()
            trace = queue.context
            if type(trace) is LookupTrace and trace.origin == address and trace.end is None:
                traces[event_id] = trace
                trace.kinds[event_id] = None
            return event_id

        return traced_id

    def start(
        self, trace: LookupTrace, known: Callable[[], list[bytes]], find: Callable[[], None]
    ) -> None:
        """Run ``find`` (which starts the Find) with ``trace`` as the context;
        ``known`` lists the ids of the nodes the origin knows now (depth 1)."""
        trace.depth = dict.fromkeys(known(), 1)
        queue = self.queue
        saved, queue.context = queue.context, trace
        try:
            find()
        finally:
            queue.context = saved

    def deliver(self, node: SimNode, event: Event, source: Address, size: int) -> None:
        slot = 2 * event.type + event.response
        self.events[slot] += 1
        self.event_bytes[slot] += size
        self.event_datagrams[slot] += -(-size // MAX_DATAGRAM)
        trace = self._traces.get(event.id) if self._traces else None
        if trace is None:
            node.engine.receive(event, source, size)
            return
        if not event.response:  # a request of the Find's origin reached ``node``
            trace.kinds[event.id] = event.type
            node.engine.receive(event, source, size)
            return
        if node.address != trace.origin:
            node.engine.receive(event, source, size)
            return
        self._answered(trace, event)
        if trace.end is not None:
            node.engine.receive(event, source, size)
            return
        queue = self.queue
        saved, queue.context = queue.context, trace
        try:
            node.engine.receive(event, source, size)
        finally:
            queue.context = saved

    @staticmethod
    def _answered(trace: LookupTrace, event: Event) -> None:
        """An answer to one of the Find's requests reached its origin."""
        payload = event.payload
        if not isinstance(payload, FindValue):
            return
        depth = trace.depth.setdefault(event.sender, 1)
        if trace.hops is None and any(v.value == trace.value for v in payload.values):
            trace.hops = depth
        for listed in payload.nodes:
            trace.depth.setdefault(listed.id, depth + 1)
