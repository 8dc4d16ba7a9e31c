"""Log records that say which node wrote them, and warnings that cannot flood.

The library's loggers form the ``dht`` hierarchy (``dht.node``,
``dht.engine``, ``dht.listener``, ...), each made by ``logger(name)``. A
record written while a node's work runs carries that node: a ``node``
attribute (``"3f2a9c1b@127.0.0.1:9000"``: its id's first 4 bytes in hex
and its address; ``"-"`` when no node's work is running) and the same
tag as a ``[3f2a9c1b@127.0.0.1:9000]`` prefix of its message, so the
records of many nodes in one process can be told apart with any format.

Why a context variable and not an adapter per node: the core's modules
keep one module-level logger shared by every node of a process (and the
simulator's thousands), and the node is known from what is running, not
from the code that logs. Each thread running a node's work says so:

- a listener thread serves one node all its life (``bound`` at its start);
- the shared timer and worker threads run each callback as the node that
  scheduled it (``bound`` when scheduled, as asyncio runs a callback in the
  context it was scheduled from);
- a user's thread is the node's for the length of a call (``acting_as``).

The library never configures logging: the only handler it adds is a
``NullHandler`` on ``dht``, as the logging HOWTO asks of libraries. What
is printed, where and from which level is the application's choice
(``logging.basicConfig``, or ``logging.getLogger("dht").setLevel``).

Records by level: DEBUG for what happens per datagram or per contact (a
datagram dropped, a send that failed, a node discovered); INFO for a
node's life (listening, joined, closed); WARNING for what an operator
should see (a bootstrap that failed, a listener error, a burst of drops:
``Bursts``); ERROR, with the traceback, for an exception in a user
callback or the user's storage, which the library swallows.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextvars import ContextVar

from ..wire.events import Address

ROOT = "dht"
NO_NODE = "-"
"""The ``node`` of a record written while no node's work runs."""

_node: ContextVar[str | None] = ContextVar("dht_node", default=None)
logging.getLogger(ROOT).addHandler(logging.NullHandler())


def node_tag(node_id: bytes, address: Address) -> str:
    """How records name a node: its id's first 4 bytes in hex, and its address."""
    return f"{node_id[:4].hex()}@{address[0]}:{address[1]}"


def current() -> str | None:
    """The tag of the node whose work runs here, if any."""
    return _node.get()


class _NodeFilter(logging.Filter):
    """Tags each record of its logger with the current node (``node`` and a
    message prefix). A filter on the logger that writes the record, as
    filters are not applied to records propagated from child loggers."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "node"):  # the caller's extra={"node": ...} wins
            node = _node.get()
            record.node = node or NO_NODE
            if node is not None:
                record.msg = f"[{node}] {record.msg}"
        return True


_FILTER = _NodeFilter()


def logger(name: str) -> logging.Logger:
    """The logger ``name`` (under ``dht``), tagging its records with the
    current node. Call it once per module, at import."""
    if name != ROOT and not name.startswith(ROOT + "."):
        raise ValueError(f"{name!r} is not in the {ROOT!r} hierarchy")
    log = logging.getLogger(name)
    if _FILTER not in log.filters:
        log.addFilter(_FILTER)
    return log


class acting_as:  # noqa: N801 - used as a function, like contextlib's
    """Within the block, records are tagged with ``node`` (then the tag
    before it again: a user's thread may act for several nodes in turn).
    A class, not a generator: every Store and Find enters one."""

    __slots__ = ("_node", "_token")

    def __init__(self, node: str | None) -> None:
        self._node = node

    def __enter__(self) -> None:
        self._token = _node.set(self._node)

    def __exit__(self, *exc: object) -> None:
        _node.reset(self._token)


class _AsNode:
    """``fn`` run as ``node``. The tag is not reset after ``fn``, even when
    it raises, so the shared thread's own record of the exception carries
    it; the next callback sets its own tag (``None`` included)."""

    __slots__ = ("fn", "node")

    def __init__(self, fn: Callable[[], None], node: str | None) -> None:
        self.fn = fn
        self.node = node

    def __call__(self) -> None:
        _node.set(self.node)
        self.fn()

    def __repr__(self) -> str:
        return repr(self.fn)


def become(node: str | None) -> None:
    """From now on this library thread works for ``node`` (not reset after:
    the next piece of work sets its own), as a thread serving many nodes
    (``dht.loop``) does before each node's datagrams."""
    _node.set(node)


def bound(fn: Callable[[], None]) -> Callable[[], None]:
    """``fn``, to run on a library thread as the node current here (none
    if none is): for callbacks handed to the shared timer and worker
    threads, and for a thread's target."""
    return _AsNode(fn, _node.get())


class _Reason:
    __slots__ = ("last", "start", "unreported", "window")

    def __init__(self, now: float) -> None:
        self.start = now  # of the current window
        self.window = 0  # events in it
        self.unreported = 0  # events since the last record
        self.last: float | None = None  # time of the last record


class Bursts:
    """At most one WARNING per reason per ``interval``, for events (drops,
    errors) that can come thousands a second: ``note(reason)`` counts them;
    a record comes once ``threshold`` of one reason fall within one window
    of ``interval`` seconds, and says how many fell in it so far, and how
    many in all since the reason's last record.

    ``clock`` returns seconds (monotonic); it is passed in so tests move
    time themselves. Thread-safe: listener threads and the timer thread
    note concurrently. The record is written outside the lock.
    """

    def __init__(
        self,
        log: logging.Logger,
        clock: Callable[[], float],
        *,
        interval: float = 10.0,
        threshold: int = 100,
    ) -> None:
        self._log = log
        self._clock = clock
        self.interval = interval
        """Seconds of a counting window, and the least time between two
        records of one reason."""
        self.threshold = threshold
        """Events of one reason within a window that make a burst."""
        self._lock = threading.Lock()
        self._reasons: dict[str, _Reason] = {}

    def note(self, reason: str, n: int = 1, detail: str = "") -> None:
        """Count ``n`` events of ``reason`` (a stats key, say); write a
        WARNING (ending with ``detail``) if they make a burst and the
        reason's last record is at least ``interval`` old."""
        now = self._clock()
        with self._lock:
            state = self._reasons.get(reason)
            if state is None:
                state = self._reasons[reason] = _Reason(now)
            if now - state.start >= self.interval:
                state.start, state.window = now, 0
            state.window += n
            state.unreported += n
            due = state.window >= self.threshold and (
                state.last is None or now - state.last >= self.interval
            )
            if due:
                window, unreported, elapsed = state.window, state.unreported, now - state.start
                state.unreported, state.last = 0, now
        if due:
            self._log.warning(
                "%s: %d in %.1f s (%d since the last such warning)%s",
                reason,
                window,
                elapsed,
                unreported,
                detail and f": {detail}",
            )
