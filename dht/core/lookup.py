"""The iterative lookup state machine (the reference's "journey", PROTOCOL.md 7.5).

Pure state: the engine tells it what happened (``answered``, ``failed``,
``stalled``, ``add``) and asks what to query next. Candidates are kept in
XOR-distance order to the target. Up to ``alpha`` requests are in flight;
one that is slow (``stalled``) stops counting against ``alpha`` so the lookup
moves on without waiting for its timeout. The lookup is done when the ``k``
closest candidates that have not failed or stalled have all answered, or when
nothing is left to ask (D30's convergence rule), or after ``max_queries``.
That budget ends lookups that hostile nodes keep feeding ever closer ids:
without it, a Find or Store never ended.

Given ``round_trip`` (seconds, per node id), ``next`` asks among the
candidates it may ask those of the closest distance prefix first (the
bits shared with the target: what a query gains towards it), and among
equals the closest first, except those clearly slower (``SLOWER``) than
the fastest, which go last (latency-aware routing). Candidates nearer than
``holders_within`` count as equals: for a Find, any of the K closest nodes
likely holds the value, so a slow one need not be asked first.

Given ``group`` (``diversity.Diversity.group``), the window and ``closest``
hold at most ``PER_NETWORK`` candidates of one network: the others wait
behind them, as if farther away, so a few attacker addresses cannot fill
the window with made-up ids and become every target of a Store.
"""

from __future__ import annotations

import bisect
import enum
from collections import Counter
from collections.abc import Callable, Iterable

from ..keys import ALPHA, K
from ..wire.events import Node
from .diversity import PER_NETWORK

MAX_QUERIES = 10 * K
"""Nodes one lookup asks at most. An honest lookup in a network of a
million nodes asks a few dozen (about log2(n) / log2(K) rounds of ``alpha``,
then the ``k`` closest)."""


SLOWER = 2.0
"""Among equally useful candidates, one whose round trip is more than this
many times the fastest one's is asked after the others; the rest are asked
closest first. Round trips within a factor of 2 are noise (on a LAN all
are): ordering by them made FirstValue finds of a 100-node loopback cluster
ask the fastest of the K-closest radius instead of the closest, which
holds the value more surely, and cost 35 % more requests (0.85 to 1.15
per find)."""


class State(enum.IntEnum):
    UNQUERIED = 0
    IN_FLIGHT = 1
    STALLED = 2
    ANSWERED = 3
    FAILED = 4


class Candidate:
    __slots__ = ("distance", "group", "node", "progress", "rtt", "state")

    def __init__(self, node: Node, distance: int, state: State, group: str | None) -> None:
        self.node = node
        self.distance = distance
        self.progress = distance.bit_length()
        """What asking it gains: lower is better, equal is as good."""
        self.state = state
        self.group = group
        """The network it counts against (None: exempt)."""
        self.rtt: float | None = None
        """Its round trip in seconds, looked up the first time ``next`` has
        to choose between it and an equally close one (most never are)."""


def _distance_of(candidate: Candidate) -> int:
    return candidate.distance


class Lookup:
    """Which nodes to ask next when looking for ``target``; not thread-safe."""

    def __init__(
        self,
        local_id: bytes,
        target: bytes,
        *,
        k: int = K,
        alpha: int = ALPHA,
        max_queries: int = MAX_QUERIES,
        group: Callable[[str], str | None] | None = None,
        round_trip: Callable[[bytes], float] | None = None,
        holders_within: int = 0,
    ) -> None:
        self.local_id = local_id
        self._group = group
        self._round_trip = round_trip
        self._holders_within = holders_within
        self.target = target
        self.k = k
        self.alpha = alpha
        self.max_queries = max_queries
        self._target = int.from_bytes(target, "big")
        self._ordered: list[Candidate] = []
        self._by_id: dict[bytes, Candidate] = {}
        self.queried = 0
        """How many nodes were asked: handed out by ``next``, or added as
        already asked. A counter, so reading it needs no lock."""
        # Candidates per state, kept by _move: next and done ran a scan of
        # every candidate for these on each response.
        self._counts = [0] * len(State)

    def add(self, nodes: Iterable[Node], state: State = State.UNQUERIED) -> int:
        """Add nodes learned from the routing table or from a response.
        Known ids and the local id are ignored; how many were new."""
        by_id = self._by_id
        target = self._target
        local_id, group_of, holders_within = self.local_id, self._group, self._holders_within
        fresh = []
        for node in nodes:
            node_id = node.id
            existing = by_id.get(node_id)
            if existing is not None:
                if state is State.ANSWERED:
                    self.queried += existing.state is State.UNQUERIED
                    self._move(existing, state)
                continue
            if node_id == local_id:
                continue
            group = group_of(node.address[0]) if group_of is not None else None
            candidate = Candidate(node, int.from_bytes(node_id, "big") ^ target, state, group)
            if candidate.distance < holders_within:
                candidate.progress = 0
            by_id[node_id] = candidate
            fresh.append(candidate)
        self._counts[state] += len(fresh)
        if state is not State.UNQUERIED:  # asked by the caller, not through next()
            self.queried += len(fresh)
        if len(fresh) > 1:  # one sort (Timsort merges the sorted runs) beats many insorts
            self._ordered += fresh
            self._ordered.sort(key=_distance_of)
        elif fresh:
            bisect.insort(self._ordered, fresh[0], key=_distance_of)
        return len(fresh)

    def _window(self) -> list[Candidate]:
        """The k closest candidates still in the running (not failed or
        stalled), at most ``PER_NETWORK`` of a network."""
        window = []
        counts: Counter[str] | None = None
        room = self.k
        for candidate in self._ordered:
            if candidate.state < State.STALLED or candidate.state is State.ANSWERED:
                group = candidate.group
                if group is not None:
                    counts = counts if counts is not None else Counter()
                    if counts[group] >= PER_NETWORK:
                        continue
                    counts[group] += 1
                window.append(candidate)
                room -= 1
                if not room:
                    break
        return window

    def next(self) -> list[Node]:
        """Nodes to query now (they become in flight): the closest first or,
        given ``round_trip``, the closest distance prefix first and the
        faster first within it; none once ``done``."""
        room = min(self.alpha - self._counts[State.IN_FLIGHT], self.max_queries - self.queried)
        if room <= 0 or not self._counts[State.UNQUERIED]:
            return []
        unqueried = [c for c in self._window() if c.state is State.UNQUERIED]
        round_trip = self._round_trip
        if round_trip is not None and len(unqueried) > room:
            # In distance order, so in progress order: those before the last
            # progress that fits are chosen; only those at it need a speed.
            edge = unqueried[room - 1].progress
            chosen = [c for c in unqueried if c.progress < edge]
            tied = [c for c in unqueried if c.progress == edge]
            rtts = []
            for candidate in tied:
                rtt = candidate.rtt
                if rtt is None:
                    rtt = candidate.rtt = round_trip(candidate.node.id)
                rtts.append(rtt)
            limit = SLOWER * min(rtts)
            chosen += [c for c, rtt in zip(tied, rtts, strict=True) if rtt <= limit]
            chosen += [c for c, rtt in zip(tied, rtts, strict=True) if rtt > limit]
            del chosen[room:]  # each part closest first
        else:
            chosen = unqueried[:room]
        for candidate in chosen:
            self._move(candidate, State.IN_FLIGHT)
        self.queried += len(chosen)
        return [candidate.node for candidate in chosen]

    def _move(self, candidate: Candidate, state: State) -> None:
        counts = self._counts
        counts[candidate.state] -= 1
        counts[state] += 1
        candidate.state = state

    def _set(self, node_id: bytes, state: State) -> None:
        candidate = self._by_id.get(node_id)
        if candidate is not None and candidate.state is not State.ANSWERED:
            self._move(candidate, state)

    def answered(self, node_id: bytes) -> None:
        self._set(node_id, State.ANSWERED)

    def failed(self, node_id: bytes) -> None:
        self._set(node_id, State.FAILED)

    def stalled(self, node_id: bytes) -> None:
        candidate = self._by_id.get(node_id)
        if candidate is not None and candidate.state is State.IN_FLIGHT:
            self._move(candidate, State.STALLED)

    @property
    def answered_count(self) -> int:
        """How many of the nodes asked answered."""
        return self._counts[State.ANSWERED]

    @property
    def done(self) -> bool:
        counts = self._counts
        if self.queried >= self.max_queries:  # out of budget: only wait for answers due
            if not counts[State.IN_FLIGHT]:
                return True
        elif not (counts[State.UNQUERIED] or counts[State.IN_FLIGHT] or counts[State.STALLED]):
            return True
        window = self._window()
        return bool(window) and all(c.state is State.ANSWERED for c in window)

    def closest(self, n: int | None = None) -> list[Node]:
        """The closest nodes that answered, closest first (``k`` by default),
        at most ``PER_NETWORK`` of a network."""
        limit = self.k if n is None else n
        out: list[Node] = []
        if limit <= 0:
            return out
        counts: Counter[str] | None = None
        for candidate in self._ordered:
            if candidate.state is State.ANSWERED:
                group = candidate.group
                if group is not None:
                    counts = counts if counts is not None else Counter()
                    if counts[group] >= PER_NETWORK:
                        continue
                    counts[group] += 1
                out.append(candidate.node)
                if len(out) == limit:
                    break
        return out
