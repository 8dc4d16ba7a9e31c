"""The datagram door into the core: bytes in, events to the engine.

``Receiver.receive_datagram(data, source, now)`` is the one receive
pipeline (in the spirit of aioquic's ``receive_datagram(data, addr, now)``):
reassembly of split events (PROTOCOL.md 3), decoding, the per-source
request rate limit, and a counter for every datagram dropped on the way,
by reason. The listener threads call it for what their sockets read, the
simulator for what its in-memory network delivers; datagrams out leave
through the engine's transport. Time is passed in; nothing here does I/O.

One receiver per socket: the kernel steers one source address to one
SO_REUSEPORT socket, so its reassembly records and rate-limit buckets need
no lock. Its counters are written only by the thread that feeds it.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ProtocolError
from ..wire.codec import decode
from ..wire.events import Address, Event
from ..wire.framing import Reassembler, wire_size
from . import nodelog
from .ratelimit import RateLimiter

log = nodelog.logger("dht.receiver")

Deliver = Callable[[Event, Address, int], None]
"""Takes a decoded event, its source, and the bytes of its datagrams."""


class Receiver:
    """Turns the datagrams of one socket into events for ``deliver``
    (``Engine.receive``); counts drops in ``count(name)``."""

    def __init__(
        self,
        deliver: Deliver,
        count: Callable[[str], None],
        *,
        reassembler: Reassembler,
        limiter: RateLimiter,
    ) -> None:
        self._deliver = deliver
        self._count = count
        self.reassembler = reassembler
        self.limiter = limiter
        self.datagrams = 0
        """Datagrams received."""
        self.events = 0
        """Events decoded and handed to the engine."""
        self.requests = 0
        """Of ``events``, the requests."""

    def receive_datagram(
        self, data: bytes | bytearray | memoryview, source: Address, now: float
    ) -> None:
        """Take one datagram from ``source``, received at ``now`` (seconds on
        the engine's clock). Malformed input, a flood and a bug in handling
        are counted and dropped, never raised: nothing a remote sends may
        end the caller's loop."""
        self.datagrams += 1
        count = self._count
        try:
            event_bytes = self.reassembler.feed(data, source, now)
            if event_bytes is None:
                return  # a part of an event still incomplete
            event = decode(event_bytes)
        except ProtocolError as error:
            count("drop-" + error.reason)
            log.debug("dropped a datagram from %s:%d: %s", *source, error)
            return
        except Exception:  # e.g. MemoryError: drop the datagram, keep the loop
            count("drop-internal-error")
            log.exception("error reading a datagram from %s", source)
            return
        if not event.response:
            if not self.limiter.allow(source, now):
                count("drop-rate-limited")
                return
            self.requests += 1
        self.events += 1
        try:
            self._deliver(event, source, wire_size(len(event_bytes)))
        except Exception:  # a bug must not end the loop: log it and go on
            count("handler-error")
            log.exception("error handling %s from %s", event.type.name, source)
