"""A listener: one thread owning one UDP socket and a ``selectors`` loop.

It drains the socket into a preallocated buffer, reassembles datagrams,
decodes events, applies the per-source request rate limit and hands events
to the engine. The reassembler and the rate limiter are per listener: the
kernel steers one source address to one SO_REUSEPORT socket.
Malformed input is counted by reason and dropped; nothing a remote sends can
end the loop. ``stop`` wakes the loop through a pipe.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable

from .affinity import pin_current_thread
from .core.engine import Stats
from .core.ratelimit import RateLimiter
from .errors import ProtocolError
from .wire.codec import decode
from .wire.events import Address, Event
from .wire.framing import Reassembler

log = logging.getLogger("dht.listener")

RECEIVE_BUFFER = 2048
"""Larger than any valid datagram, so truncation (D10) shows as a long read
(which framing refuses as ``long-datagram``)."""
DRAIN_BATCH = 256
"""Datagrams handled per wake-up before checking for a stop request."""


class Listener:
    """Receives on ``sock`` in its own thread; calls ``deliver(event, source)``."""

    def __init__(
        self,
        sock: socket.socket,
        deliver: Callable[[Event, Address], None],
        stats: Stats,
        *,
        reassembler: Reassembler,
        limiter: RateLimiter,
        name: str,
        cpus: frozenset[int] | None = None,
    ) -> None:
        self.sock = sock
        self._deliver = deliver
        self._stats = stats
        self.reassembler = reassembler
        self.limiter = limiter
        self._cpus = cpus
        # Written only by this listener's thread, so no lock: read for stats.
        self.datagrams = 0
        """Datagrams received."""
        self.events = 0
        """Events decoded and handed to the engine."""
        self._wake_lock = threading.Lock()
        self._wake_open = False
        self._wake_read = self._wake_write = -1
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def start(self) -> None:
        # The wake pipe exists only while the thread runs, which closes it.
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        self._wake_open = True
        self._thread.start()

    def stop(self) -> None:
        """Ask the loop to end and wait for it (unless called from it: then
        it ends when the current datagram's handling returns)."""
        with self._wake_lock:  # the fds may already be closed (and reused)
            if self._wake_open:
                os.write(self._wake_write, b"x")
        if threading.current_thread() is not self._thread and self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        pin_current_thread(self._cpus)
        buffer = bytearray(RECEIVE_BUFFER)
        view = memoryview(buffer)
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self.sock, selectors.EVENT_READ)
                selector.register(self._wake_read, selectors.EVENT_READ)
                while True:
                    for key, _ in selector.select():
                        if key.fileobj == self._wake_read:
                            return
                    self._drain(buffer, view)
        except (OSError, ValueError) as error:  # the socket was closed under us
            log.debug("listener stopped: %s", error)
        finally:
            with self._wake_lock:
                self._wake_open = False
                os.close(self._wake_read)
                os.close(self._wake_write)

    def _drain(self, buffer: bytearray, view: memoryview) -> None:
        """Handle what the socket holds, at most ``DRAIN_BATCH`` datagrams, then
        return to ``select`` so a stop request is seen even under a flood."""
        sock = self.sock
        stats = self._stats
        reassembler = self.reassembler
        limiter = self.limiter
        for _ in range(DRAIN_BATCH):
            try:
                size, source = sock.recvfrom_into(buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # e.g. ICMP port unreachable reported late
                stats.incr("receive-error")
                log.debug("receive error: %s", error)
                return
            self.datagrams += 1
            now = time.monotonic()
            try:
                data = reassembler.feed(view[:size], source, now)
                if data is None:
                    continue
                event = decode(data)
            except ProtocolError as error:
                stats.incr("drop-" + error.reason)
                continue
            if not event.response and not limiter.allow(source, now):
                stats.incr("drop-rate-limited")
                continue
            self.events += 1
            try:
                self._deliver(event, source)
            except Exception:  # a bug must not end the loop: log it and go on
                stats.incr("handler-error")
                log.exception("error handling %s from %s", event.type.name, source)
