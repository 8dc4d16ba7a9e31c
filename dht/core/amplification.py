"""The amplification cap: how much a node answers an address that has never
answered it, so may be forged, and the answers it holds until it does.

A request costs its sender a datagram and can make us send many (a split
FIND_VALUE answer runs to megabytes), towards whatever source address the
request claims. So before a source has answered one of our requests, an
answer to one of its requests may be at most ``FACTOR`` times the request's
size (a full FIND_NODE answer, what a joining node needs first, is about 8
times), and the source gets at most ``limit`` bytes in all; halfway there,
or at the first answer held back, the engine pings it, and its answer
proves the address. What the cap holds back is sent once that proof
arrives, or dropped after ``hold_for`` seconds: an honest requester gets its
whole answer one round trip later instead of a truncated one.

Ports cost an attacker nothing, so the unproven addresses of one IP address
also share a token bucket: at most ``HOST_BURST`` times ``limit`` bytes at
once, refilled at ``limit`` bytes per second (requests forged from 200
ports of a victim's address were answered with 334 times their size). And
addresses cost little more: all unproven addresses together share one more
bucket, ``global_rate`` bytes per second after a burst of
``GLOBAL_BURST_S`` seconds of it (one node sent 123 MiB to 100 forged
victims in 10 s). Pure state, thread-safe; time is passed in.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from ..wire.events import Address
from .ratelimit import TokenBuckets

REMEMBERED_ADDRESSES = 65536
"""Proven and unproven addresses remembered (least recently used go)."""
HELD_BYTES = 4 * 1024 * 1024
"""Bytes of answers held for unproven addresses, in all (oldest go first)."""
HELD_EVENTS_PER_SOURCE = 64
"""Events held for one source at most (a split answer of the largest values
takes about 34); the oldest go first."""
HOST_BURST = 16
"""Unproven addresses of one IP address get at most this many times
``limit`` bytes at once (then ``limit`` bytes per second)."""
FACTOR = 10
"""An answer to an unproven address is at most this many times its request."""
SMALLEST_ANSWER = 96
"""Bytes of the smallest answer there is (a PONG as Go encodes it)."""
GLOBAL_BURST_S = 4.0
"""Seconds of ``global_rate`` all unproven addresses may get at once."""

Datagrams = list[bytes]
"""The datagrams of one event."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What ``AmplificationGuard.allow`` decided for one event."""

    send: bool
    """Whether it may be sent now."""
    prove: bool
    """Whether to ping the source now, so that its answer lifts the cap."""


_SEND = Verdict(send=True, prove=False)


@dataclass(slots=True)
class _Held:
    deadline: float
    events: list[Datagrams]
    size: int


class AmplificationGuard:
    """Bytes answered per unproven address, and answers held for them."""

    def __init__(
        self,
        limit: int,
        *,
        hold_for: float,
        global_rate: float = 256 * 1024,
        addresses: int = REMEMBERED_ADDRESSES,
        held_bytes: int = HELD_BYTES,
    ) -> None:
        self.limit = limit
        self.global_rate = global_rate
        self._global = TokenBuckets(global_rate, max(1.0, GLOBAL_BURST_S * global_rate))
        self.hold_for = hold_for
        self.addresses = addresses
        self.held_bytes_cap = held_bytes
        self._lock = threading.Lock()
        self._proven: OrderedDict[Address, None] = OrderedDict()
        self._answered: OrderedDict[Address, int] = OrderedDict()
        self._held: OrderedDict[Address, _Held] = OrderedDict()  # deadline order
        self._held_per_host: dict[str, int] = {}  # bytes of _held, per IP address
        self._held_by_host: dict[str, dict[Address, None]] = {}  # _held's keys, oldest first
        self._hosts: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, when
        self.held_bytes = 0
        """Bytes of answers held now."""

    def is_proven(self, source: Address) -> bool:
        """Whether ``source`` has answered one of our requests (recently
        enough to be remembered)."""
        return source in self._proven  # one dict lookup: atomic under the GIL

    def spent(self, source: Address, now: float) -> bool:
        """Whether ``source`` is unproven and has used up its bytes, or all
        unproven addresses have, with no answer held for it (so a request
        from it is not worth any work; while an answer is held, a proof may
        be on its way and the next answer is held too)."""
        with self._lock:
            held = self._held.get(source)
            if source in self._proven or (held is not None and held.deadline > now):
                return False
            return (
                self._answered.get(source, 0) >= self.limit
                or self._global.available(None, now) < SMALLEST_ANSWER
            )

    def allow(self, source: Address, size: int, now: float, *, allowance: int) -> Verdict:
        """Whether an event of ``size`` bytes may be sent to ``source`` now
        (counting it if so), and whether to ping ``source``. ``allowance``
        is what is left for the request it answers (``FACTOR`` times its
        size, less the events already sent for it)."""
        with self._lock:
            if source in self._proven:
                return _SEND
            sent = self._answered.pop(source, 0)
            within = sent + size <= self.limit
            send = (
                within
                and size <= allowance
                and self._global.available(None, now) >= size
                and self._take_from_host(source[0], size, now)
            )
            if send:
                self._global.charge(None, size, now)
            # Once over its own cap, spent() refuses the source before any
            # work is done; refused for another budget, it keeps what it had.
            self._answered[source] = sent + size if send else sent if within else self.limit
            if len(self._answered) > self.addresses:
                self._answered.popitem(last=False)
        crossed = sent < self.limit // 2 <= sent + size
        return Verdict(send=send, prove=crossed or not send)

    def _take_from_host(self, host: str, size: int, now: float) -> bool:
        burst = HOST_BURST * self.limit
        tokens, then = self._hosts.pop(host, (burst, now))
        tokens = min(burst, tokens + (now - then) * self.limit)
        taken = tokens >= size
        self._hosts[host] = (tokens - size if taken else tokens, now)
        if len(self._hosts) > self.addresses:
            self._hosts.popitem(last=False)
        return taken

    def hold(self, source: Address, events: list[Datagrams], now: float) -> None:
        """Keep the rest of an answer that ``allow`` refused until ``source``
        is proven, after what is held for it already: its newest
        ``HELD_EVENTS_PER_SOURCE`` events that fit in the byte cap. To stay
        within that cap, the IP address holding the most bytes loses its
        oldest answers first: a flood of large requests from one address
        evicted, oldest first, the answers of honest requesters before
        their proof came."""
        with self._lock:
            self._drop_expired(now)
            previous = self._held.get(source)
            if previous is not None:
                events = previous.events + events
            events = events[-HELD_EVENTS_PER_SOURCE:]
            sizes = [sum(map(len, datagrams)) for datagrams in events]
            size = sum(sizes)
            oldest = 0
            while size > self.held_bytes_cap:  # keep the newest that fit
                size -= sizes[oldest]
                oldest += 1
            events = events[oldest:]
            if not events:
                self._take(source)
                return
            before = previous.size if previous is not None else 0
            while self.held_bytes - before + size > self.held_bytes_cap:
                self._take(self._victim(source))
            host = source[0]
            if previous is None:
                self._held[source] = _Held(now + self.hold_for, events, size)
                self._held_by_host.setdefault(host, {})[source] = None
            else:
                # Updated in place: the first hold's deadline stands (renewed
                # with every request, it let a source that never answers past
                # spent()), and so does its place in deadline order.
                previous.events, previous.size = events, size
            self.held_bytes += size - before
            self._held_per_host[host] = self._held_per_host.get(host, 0) + size - before

    def _victim(self, keep: Address) -> Address:
        """The oldest address of the IP address holding the most bytes, other
        than ``keep`` (under the lock; something else must be held)."""
        per_host = self._held_per_host
        heaviest = max(per_host, key=per_host.__getitem__)
        for address in self._held_by_host[heaviest]:
            if address != keep:
                return address
        # ``keep`` is the heaviest address's only one: the next heaviest.
        runner_up = max((h for h in per_host if h != heaviest), key=per_host.__getitem__)
        return next(iter(self._held_by_host[runner_up]))

    def prove(self, address: Address, now: float) -> list[Datagrams]:
        """``address`` answered one of our requests, so it is real: no cap
        for it from now on. Returns the answers held for it, to send now."""
        with self._lock:
            self._proven[address] = None
            self._proven.move_to_end(address)
            if len(self._proven) > self.addresses:
                self._proven.popitem(last=False)
            self._answered.pop(address, None)
            if not self._held:
                return []
            held = self._take(address)
        return held.events if held is not None and held.deadline > now else []

    def _take(self, address: Address) -> _Held | None:
        """Remove what is held for ``address`` (under the lock)."""
        held = self._held.pop(address, None)
        if held is not None:
            self.held_bytes -= held.size
            host = address[0]
            same_host = self._held_by_host[host]
            del same_host[address]
            if same_host:
                self._held_per_host[host] -= held.size
            else:
                del self._held_per_host[host]
                del self._held_by_host[host]
        return held

    def _drop_expired(self, now: float) -> None:
        while self._held:
            address, held = next(iter(self._held.items()))
            if held.deadline > now:
                return
            self._take(address)

    @property
    def unproven_addresses(self) -> int:
        """Unproven addresses with bytes counted (bounded by ``addresses``)."""
        with self._lock:
            return len(self._answered)
