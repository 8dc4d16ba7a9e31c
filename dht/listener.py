"""A listener: one thread owning one UDP socket and a ``selectors`` loop.

While the socket is quiet the thread waits in ``select``. Once a datagram
arrives it switches to blocking reads, which wait in the kernel for the next
datagram, until the socket has been quiet for ``QUIET_S``. Every system call
hands the GIL to a waiting thread: one ``recvfrom`` per datagram, instead of
a ``select``, a ``recvfrom`` and a final empty read, saves thread switches.
Sends (from any thread) use ``MSG_DONTWAIT``, so the blocking mode never
holds up a send.

Each datagram is read into a preallocated buffer and handed to the
listener's ``Receiver`` (``dht.core.receiver``: reassembly, decoding, the
rate limit, drop counting), the same door the simulator feeds; nothing a
remote sends can end the loop. ``stop`` wakes
a ``select`` through a pipe, and a blocked read by shutting the socket's
receive side (Linux wakes the reader at once; elsewhere the read returns
within ``QUIET_S``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable

from .affinity import pin_current_thread
from .core import nodelog
from .core.receiver import Receiver

log = nodelog.logger("dht.listener")

RECEIVE_BUFFER = 2048
"""Larger than any valid datagram, so truncation (D10) shows as a long read
(which framing refuses as ``long-datagram``)."""
QUIET_S = 0.2
"""How long a blocking read waits for the next datagram before the thread
goes back to ``select`` (SO_RCVTIMEO). Each busy spell ends with one extra
wake-up; a longer wait would only delay ``stop`` where shutting the receive
side does not wake a read (not on Linux)."""


PEER_GONE = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN})
"""Read errors that report a datagram we sent to a peer that is gone (ICMP):
expected in a network with churn, so DEBUG; any other is a WARNING."""


class Listener:
    """Receives on ``sock`` in its own thread and feeds ``receiver``;
    counts receive errors in ``count(name)``."""

    def __init__(
        self,
        sock: socket.socket,
        receiver: Receiver,
        count: Callable[[str], None],
        *,
        name: str,
        cpus: frozenset[int] | None = None,
    ) -> None:
        self.sock = sock
        self.receiver = receiver
        self._count = count
        self._cpus = cpus
        self._stop_requested = threading.Event()
        self._wake_lock = threading.Lock()
        self._wake_open = False
        self._wake_read = self._wake_write = -1
        # The thread serves the node current here all its life (``nodelog``).
        self._thread = threading.Thread(target=nodelog.bound(self._run), name=name, daemon=True)
        self._errors = nodelog.Bursts(log, time.monotonic, threshold=1)
        """Unexpected read errors: one WARNING per interval at most."""

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def start(self) -> None:
        """Start the thread. Everything that can fail (out of file
        descriptors or threads) happens here, on the caller's thread, and a
        failure raises with nothing left open."""
        self.sock.setblocking(True)
        quiet = struct.pack("ll", int(QUIET_S), int(QUIET_S % 1 * 1_000_000))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, quiet)
        # The selector and the wake pipe exist only while the thread runs,
        # which closes them.
        with contextlib.ExitStack() as undo:
            self._selector = undo.enter_context(selectors.DefaultSelector())
            self._wake_read, self._wake_write = os.pipe()
            undo.callback(os.close, self._wake_read)
            undo.callback(os.close, self._wake_write)
            self._selector.register(self.sock, selectors.EVENT_READ)
            self._selector.register(self._wake_read, selectors.EVENT_READ)
            self._wake_open = True
            undo.callback(setattr, self, "_wake_open", False)
            self._thread.start()
            undo.pop_all()

    def stop(self) -> None:
        """Ask the loop to end and wait for it (unless called from it: then
        it ends when the current datagram's handling returns)."""
        self._stop_requested.set()
        with self._wake_lock:  # the fds may already be closed (and reused)
            if self._wake_open:
                os.write(self._wake_write, b"x")
        with contextlib.suppress(OSError):  # ENOTCONN on Linux, after the wake-up
            self.sock.shutdown(socket.SHUT_RD)
        if threading.current_thread() is not self._thread and self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        pin_current_thread(self._cpus)
        buffer = bytearray(RECEIVE_BUFFER)
        view = memoryview(buffer)
        selector = self._selector
        try:
            while not self._stop_requested.is_set():
                selector.select()
                self._drain(buffer, view)
        except (OSError, ValueError) as error:  # the socket was closed under us
            if self._stop_requested.is_set():
                log.debug("listener stopped: %s", error)
            else:
                log.warning(
                    "listener %s stopped: %s; this socket no longer receives",
                    self._thread.name,
                    error,
                )
        finally:
            selector.close()
            with self._wake_lock:
                self._wake_open = False
                os.close(self._wake_read)
                os.close(self._wake_write)

    def _drain(self, buffer: bytearray, view: memoryview) -> None:
        """Handle datagrams until the socket has been quiet for ``QUIET_S`` or
        a stop is requested (checked after every datagram, so a flood does
        not delay it)."""
        sock = self.sock
        receive = self.receiver.receive_datagram
        stopping = self._stop_requested.is_set
        while not stopping():
            try:
                size, source = sock.recvfrom_into(buffer)
            except BlockingIOError:  # quiet for QUIET_S
                return
            except OSError as error:
                receive_failed(error, self._count, self._errors)
                return
            if not size and stopping():  # the shutdown in stop() woke us
                return
            receive(view[:size], source, time.monotonic())


def receive_failed(error: OSError, count: Callable[[str], None], errors: nodelog.Bursts) -> None:
    """Count and log a read error: most often an ICMP port unreachable,
    reported late, for a datagram sent to a peer that is gone."""
    count("receive-error")
    if error.errno in PEER_GONE:
        log.debug("receive error: %s", error)
    else:
        errors.note("receive-error", detail=str(error))
