"""The shared loop: one thread that serves the sockets and the timers of
every node of a process that sets ``Config.shared_io``.

With a thread per socket and one for the timers, each request and answer
hands the GIL between threads: a listener thread wakes for the datagram,
the timer thread for the timeout the answer cancels and the one the next
request schedules. In a process that hosts many nodes (tests, simulations,
services running many identities) most of the CPU went to those hand-offs
(``bench/README.md``, where the CPU goes). Here one thread waits in
``select`` for any node's socket and for the earliest timer, reads every
ready socket until it is empty (at most ``BATCH`` datagrams each, so one
busy node cannot starve the others), then fires the due timers. A timer
scheduled from this thread wakes nothing; one scheduled from another
thread writes to a wake pipe only when it is due before the loop planned
to wake.

Callbacks (answers, timeouts, user callbacks) run on this thread, one at
a time: one that blocks holds up every node of the process that shares
it, as the shared timer thread already did. There is one loop per
``timer_tick`` and ``cpus``; the last node to release it stops it.
"""

from __future__ import annotations

import contextlib
import math
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable

from .core import nodelog
from .core.receiver import Receiver
from .listener import RECEIVE_BUFFER, receive_failed
from .shared import SharedThreads
from .timer import TimerThread, fire

log = nodelog.logger("dht.loop")

BATCH = 64
"""Datagrams read from one socket per pass before the next socket's."""
PASSES = 16
"""Passes over the ready sockets per turn while some still have datagrams
waiting, before the due timers fire: under load, an answer waiting to be
read must cancel its timeout and hedge rather than lose to them (timers
that fired first sent a request more for each and overloaded the loop)."""


class _Served:
    """A socket the loop reads, and where its datagrams go."""

    __slots__ = ("busy", "count", "errors", "node", "open", "receiver", "sock")

    def __init__(
        self,
        sock: socket.socket,
        receiver: Receiver,
        count: Callable[[str], None],
        node: str | None,
    ) -> None:
        self.sock = sock
        self.receiver = receiver
        self.count = count
        self.node = node
        self.errors = nodelog.Bursts(log, time.monotonic, threshold=1)
        self.open = True
        """False once removed: a callback run by one of its datagrams may
        have closed the node, and its socket with it."""
        self.busy = False
        """True while the loop handles its datagrams."""


class SharedLoop(TimerThread):
    """Thread-safe ``add``/``remove`` of sockets and ``schedule``/``cancel``
    of timers (``TimerThread``'s), all served by the loop's own thread."""

    NAME = "dht-loop"

    def __init__(
        self, *, tick: float = 0.01, name: str = "dht-loop", cpus: frozenset[int] | None = None
    ) -> None:
        super().__init__(tick=tick, name=name, cpus=cpus)
        self._sleep_until = 0.0  # when a sleeping loop wakes; 0 while it works
        # Its descriptors are the thread's to close; until it runs, ours.
        with contextlib.ExitStack() as undo:
            self._selector = selectors.DefaultSelector()
            undo.callback(self._selector.close)
            self._wake_read, self._wake_write = os.pipe()
            undo.callback(os.close, self._wake_read)
            undo.callback(os.close, self._wake_write)
            os.set_blocking(self._wake_read, False)
            os.set_blocking(self._wake_write, False)
            self._selector.register(self._wake_read, selectors.EVENT_READ)
            undo.pop_all()

    def start(self) -> None:
        """Start the thread; if it cannot start (out of threads), close the
        selector and the wake pipe before raising."""
        try:
            super().start()
        except BaseException:
            self._close()
            raise

    # -- sockets -------------------------------------------------------------

    def add(self, sock: socket.socket, receiver: Receiver, count: Callable[[str], None]) -> None:
        """Feed the datagrams of ``sock`` to ``receiver`` from now on, as the
        node current here (``nodelog``); ``count(name)`` counts read errors."""
        sock.setblocking(False)
        with self._cond:
            self._selector.register(
                sock, selectors.EVENT_READ, _Served(sock, receiver, count, nodelog.current())
            )
            self._wake()

    def remove(self, sock: socket.socket) -> None:
        """Stop reading ``sock``. Called from another thread, it returns once
        no datagram of it is being handled; it does not wait for the other
        nodes' (a callback of one may be waiting for this very call)."""
        with self._cond:
            try:
                served: _Served = self._selector.unregister(sock).data
            except (KeyError, ValueError):
                return
            served.open = False  # before reading busy; _read does the reverse
            if threading.current_thread() is not self._thread:
                self._cond.wait_for(lambda: not served.busy)

    # -- the thread ----------------------------------------------------------

    def _wake(self) -> None:
        """Under ``_cond``: make a sleeping ``select`` return."""
        if self._sleep_until:
            self._sleep_until = 0.0
            with contextlib.suppress(BlockingIOError):  # a wake-up is pending already
                os.write(self._wake_write, b"x")

    def _dropping(self) -> None:
        self._wake()

    def _loop(self) -> None:
        buffer = bytearray(RECEIVE_BUFFER)
        view = memoryview(buffer)
        selector, wheel, cond = self._selector, self._wheel, self._cond
        try:
            while True:
                with cond:
                    if not self._running:
                        return
                    wake = wheel.next_wakeup()
                    self._sleep_until = math.inf if wake is None else wake
                    pause = None if wake is None else max(wake - self._clock(), 0.0)
                ready = selector.select(pause)
                with cond:
                    self._sleep_until = 0.0
                for _ in range(PASSES):
                    full = False
                    for key, _ in ready:
                        served = key.data
                        if served is None:
                            with contextlib.suppress(BlockingIOError):
                                os.read(self._wake_read, 4096)
                        else:
                            full = _read(served, buffer, view, cond) or full
                    if not full:
                        break
                    ready = selector.select(0)
                with cond:
                    due = wheel.advance(self._clock())
                fire(due)
                del due, ready
        finally:
            with cond:
                self._running = False
                cond.notify_all()
            self._close()

    def _close(self) -> None:
        self._selector.close()
        os.close(self._wake_read)
        os.close(self._wake_write)


def _read(served: _Served, buffer: bytearray, view: memoryview, cond: threading.Condition) -> bool:
    """Up to ``BATCH`` datagrams of one socket, handled as its node; True
    if it read that many (more may wait)."""
    nodelog.become(served.node)
    sock, receive = served.sock, served.receiver.receive_datagram
    served.busy = True
    try:
        for _ in range(BATCH):
            if not served.open:
                return False
            try:
                size, source = sock.recvfrom_into(buffer)
            except BlockingIOError:
                return False
            except OSError as error:
                receive_failed(error, served.count, served.errors)
                return False
            receive(view[:size], source, time.monotonic())
        return True
    finally:
        served.busy = False  # before reading open; remove does the reverse
        if not served.open:  # a remove may be waiting
            with cond:
                cond.notify_all()


_loops = SharedThreads(SharedLoop.made_for)


def shared_loop(tick: float, cpus: frozenset[int] | None) -> SharedLoop:
    """The process's running loop for ``tick`` and ``cpus``, started on
    first use. Each call must be matched by one ``release_loop``."""
    return _loops.acquire((tick, cpus))


def release_loop(loop: SharedLoop) -> None:
    """Give back a ``shared_loop``; the last user stops it."""
    _loops.release((loop.tick, loop.cpus), loop)
