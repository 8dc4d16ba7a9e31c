"""The public node: ``New(cfg)`` starts one; ``Store``, ``Find``, ``Close``.

Threads of a node: ``listeners`` listener threads (one UDP socket each, all
bound to the same address, with SO_REUSEPORT when there are several; no
other node may bind it: see ``_bind``), and a timer thread and a
worker thread (scans of the storage), which the nodes of a process share
(see ``dht.timer`` and ``dht.worker``). With ``Config.shared_io`` one
thread of the process (``dht.loop``) reads the sockets and fires the timers
of every such node instead. User callbacks run on a listener or the timer
thread (the shared loop's thread with ``shared_io``), or on the calling
thread when the answer is immediate (a Find answered from local storage, a
call after Close); they must not block for long: a callback that blocks the
timer thread delays every node's timeouts. An exception raised by a
callback is logged on the ``dht`` logger and swallowed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import itertools
import math
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime, timedelta
from typing import Any

from . import state
from .config import Config, resolve
from .core import nodelog
from .core.engine import Engine
from .core.limits import Limits
from .core.ratelimit import RateLimiter
from .core.receiver import Deliver, Receiver
from .core.schedule import Schedule
from .core.stats import COUNTERS
from .core.storage import MemoryStorage
from .errors import (
    AddressInUse,
    ArgumentError,
    ArgumentTypeError,
    BootstrapError,
    TTLTooLong,
    ValueTooLarge,
)
from .keys import INT64_MAX, INT64_MIN, EventIds, check_id, random_id
from .listener import Listener
from .loop import SharedLoop, release_loop, shared_loop
from .timer import TimerThread, release_timer, shared_timer
from .wire.events import MAX_VALUE_SIZE, NS_PER_SECOND, Address
from .wire.framing import Reassembler
from .worker import release_worker, shared_worker

log = nodelog.logger("dht.node")

StoreCallback = Callable[[Exception | None], object]
FindCallback = Callable[[bytes | None, Exception | None], object]


class ValuesFrom:
    """Find option: only values created at or after ``t`` (a ``datetime``, or
    seconds since the Unix epoch)."""

    __slots__ = ("from_ns",)

    def __init__(self, t: datetime | float) -> None:
        if not isinstance(t, datetime | int | float) or isinstance(t, bool):
            raise ArgumentTypeError(f"ValuesFrom takes a datetime or epoch seconds, not {t!r}")
        try:
            seconds = t.timestamp() if isinstance(t, datetime) else float(t)
        except (OverflowError, ValueError, OSError):  # 10**400, datetime.min
            seconds = math.nan
        if not math.isfinite(seconds) or not INT64_MIN <= seconds * NS_PER_SECOND <= INT64_MAX:
            raise ArgumentError(f"ValuesFrom time {t!r} is out of range")
        self.from_ns = int(seconds * NS_PER_SECOND)


class FirstValue:
    """Find option: end at the first node that holds the key (classic Kademlia
    FIND_VALUE), instead of asking the K closest nodes. Values that other
    requests bring back before then are delivered too. Use it when any
    holder's copy will do, which is the case for keys stored with ``Store``
    (every value of a key goes to the same K nodes).

    It asks the closest known node first, alone: it usually holds the key.
    After a miss, a failure, or no answer within four smoothed round trips
    (the hedge delay; at most ``timeout / 4``), it asks 3 nodes at a time.
    So a find usually costs one request instead of about 20."""

    __slots__ = ()


class DHT:
    """A running node. Create it with ``dht.New(cfg)``; use it as a context
    manager or call ``Close()``. Every method is thread-safe."""

    def __init__(self, cfg: Config) -> None:
        self.config = cfg
        self._id = cfg.local_id or random_id()
        self._closed = False
        self._close_lock = threading.Lock()
        self._close_done = threading.Event()
        self._sockets = _bind(cfg)
        self._tag = nodelog.node_tag(self._id, self._sockets[0].getsockname()[:2])
        """How this node's log records name it (``nodelog``)."""
        cpus = frozenset(cfg.cpus) if cfg.cpus is not None else None
        # What fails part-way (out of threads or file descriptors) undoes,
        # in reverse, what was set up before it.
        with nodelog.acting_as(self._tag), contextlib.ExitStack() as undo:
            for sock in self._sockets:
                undo.callback(sock.close)
            self._loop: SharedLoop | None = None  # also self._timers, if set
            self._timers: TimerThread
            if cfg.shared_io:
                self._loop = self._timers = shared_loop(cfg.timer_tick, cpus)
                undo.callback(release_loop, self._loop)
            else:
                self._timers = shared_timer(cfg.timer_tick, cpus)
                undo.callback(release_timer, self._timers)
            self._worker = shared_worker(cpus)
            undo.callback(release_worker, self._worker)
            host, port = self._sockets[0].getsockname()[:2]
            self._address: Address = (host, port)
            self._send_from = itertools.cycle(self._sockets)
            wall_clock_ns = time.time_ns  # the engine's and the default storage's
            storage = cfg.storage
            if storage is None:
                storage = default_storage(cfg, wall_clock_ns)
            self._engine = Engine(
                self._id,
                storage=storage,
                transport=self._transmit,
                timers=self._timers,
                background=self._worker.submit,
                clock=time.monotonic,
                wall_clock_ns=wall_clock_ns,
                new_id=EventIds(),
                **engine_options(cfg),
            )
            undo.callback(self._engine.close)  # what started listeners set going
            self._engine.stats.alarm = nodelog.Bursts(log, time.monotonic).note
            self._receivers = [
                receiver_for(cfg, self._engine.receive, self._engine) for _ in self._sockets
            ]
            self._listeners: list[Listener] = []
            count = self._engine.stats.incr
            for i, (sock, receiver) in enumerate(zip(self._sockets, self._receivers, strict=True)):
                if self._loop is not None:
                    self._loop.add(sock, receiver, count)
                    undo.callback(self._loop.remove, sock)
                    continue
                listener = Listener(
                    sock, receiver, count, name=f"dht-listener-{port}-{i}", cpus=cpus
                )
                listener.start()
                undo.callback(listener.stop)
                self._listeners.append(listener)
            undo.pop_all()
        _library_threads.update(self.threads())
        with nodelog.acting_as(self._tag):
            self._engine.start()
            self._state_lock = threading.Lock()
            self._state_timer: object = None
            self._saved_contacts: tuple[tuple[bytes, Address], ...] = ()
            """The contacts of the state the node started from, saved again
            while its table is empty (a node that found none of them alive
            keeps them for its next start)."""
            if cfg.state_path is not None:
                self._state_timer = self._timers.schedule(state.SAVE_INTERVAL, self._save_soon)
            log.info("listening on %s as %s", self.address, self._id.hex())

    # -- properties ----------------------------------------------------------

    @property
    def id(self) -> bytes:
        """This node's 20-byte id."""
        return self._id

    @property
    def address(self) -> str:
        """The bound ``host:port``."""
        return f"{self._address[0]}:{self._address[1]}"

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict[str, int]:
        """The node's counters and levels by name, each an ``int``: data
        received and dropped (``drop-<reason>``), requests and their
        timeouts, the routing table, the storage (keys, values, bytes),
        and the lookups done with their durations (microseconds) and the
        nodes they queried (p50, p99). ``dht.core.stats.STATS`` says what
        every key means and its unit; ``dht.metrics`` serves them to
        Prometheus. Thread-safe; the ``stored-*`` keys ask the storage
        (``stored-keys`` takes a pass over its keys)."""
        counts = dict.fromkeys(COUNTERS, 0)
        counts.update(self._engine.stats.snapshot())
        counts.update(self._engine.stats.lookup_figures())
        counts["routing-table-size"] = len(self._engine.table)
        counts["pending-requests"] = self._engine.pending_requests
        receivers = self._receivers
        counts["datagrams-received"] = sum(receiver.datagrams for receiver in receivers)
        counts["events-received"] = sum(receiver.events for receiver in receivers)
        counts["requests-received"] = sum(receiver.requests for receiver in receivers)
        counts["fragments-held"] = sum(receiver.reassembler.records for receiver in receivers)
        counts.update(_stored(self._engine.storage))
        return counts

    def threads(self) -> list[threading.Thread]:
        """The node's threads: its listeners, and the timer thread (or, with
        ``shared_io``, the loop's thread) and worker thread it shares with
        the process's other nodes of the same ``timer_tick`` and ``cpus``."""
        shared = [self._timers.thread, self._worker.thread]
        return [listener.thread for listener in self._listeners] + shared

    # -- operations ----------------------------------------------------------

    def Store(
        self,
        key: bytes,
        value: bytes,
        ttl: float | timedelta,
        callback: StoreCallback | None = None,
    ) -> Future[None]:
        """Store ``value`` under the 20-byte ``key`` for ``ttl`` seconds.

        Finds the K = 20 closest nodes to the key by an iterative lookup and
        sends them the value (storing it here too when this node is one of
        them). It succeeds when a majority of those targets kept it: a node
        of ours acknowledges only what it kept, and says why it refused
        (its store's share for our network is full, the key is full, ...).
        Otherwise it fails with ``StoreError`` saying how many were tried,
        how many kept it, and why the others did not. Ends exactly once: ``callback(None)`` or
        ``callback(error)``, on a listener or timer thread, and the returned
        future resolves the same way.

        The node then republishes the value to the then K closest nodes
        every ``Config.republish_interval`` (or half its remaining life,
        when shorter) until its ttl ends, ``Close``, or
        ``StopRepublishing(key)``; each copy keeps the original creation
        time and expiry, so the value never lives longer than ``ttl``.

        Raises ``ArgumentError`` for invalid arguments, before anything is
        sent: ``ValueTooLarge`` for over 32768 bytes, ``TTLTooLong`` for a
        ttl over ``Config.max_ttl`` (no node of ours keeps a value longer),
        ``ArgumentTypeError`` (also a ``TypeError``) for a wrong type, a
        callback that is not callable included.
        """
        key = check_id(key, "key")
        if not isinstance(value, bytes | bytearray | memoryview):
            raise ArgumentTypeError(f"value must be bytes, not {type(value).__name__}")
        value = bytes(value)
        if len(value) > MAX_VALUE_SIZE:
            raise ValueTooLarge(len(value), MAX_VALUE_SIZE)
        ttl_ns = _ttl_ns(ttl)
        _check_callback(callback, "Store")
        if ttl_ns > self._engine.limits.max_ttl_ns:
            raise TTLTooLong(ttl_ns / NS_PER_SECOND, self.config.max_ttl)
        future: Future[None] = Future()
        future.set_running_or_notify_cancel()

        def done(error: Exception | None) -> None:
            _settle(future, error, None)
            if callback is not None:
                callback(error)

        with nodelog.acting_as(self._tag):
            self._engine.store(key, value, ttl_ns, done)
        return future

    def StopRepublishing(self, key: bytes) -> int:
        """Republish the values this node stored under ``key`` no more (the
        copies already stored live out their ttl); returns how many values
        were being republished. Any thread."""
        return self._engine.stop_republishing(check_id(key, "key"))

    def Find(
        self, key: bytes, callback: FindCallback | None = None, *opts: ValuesFrom | FirstValue
    ) -> Future[list[bytes]]:
        """Find the values stored under the 20-byte ``key``.

        An iterative FIND_VALUE lookup (3 requests in flight) that ends when
        the 20 closest nodes have answered or failed; values held here come
        first, then those of the network (D50: local ones alone could be a
        squatter's). With ``FirstValue``, values held here end it at once. ``callback(value, None)``
        runs once per distinct value; if none is found, ``callback(None,
        NotFoundError)`` runs once. Callbacks run on a listener or timer
        thread (or the calling thread for a local answer). The future
        resolves to the list of values, or raises ``NotFoundError``.
        ``opts`` may hold ``ValuesFrom(t)`` (the first one counts) and
        ``FirstValue()``; they come after the callback, as in Go:
        ``Find(key, None, FirstValue())``. Raises ``ArgumentTypeError``
        (also a ``TypeError``), before anything is sent, for an option in the
        callback's place or any other argument of the wrong type.
        """
        key = check_id(key, "key")
        _check_callback(callback, "Find")
        from_ns = 0
        first_only = False
        for opt in opts:
            if isinstance(opt, ValuesFrom):
                from_ns = from_ns or opt.from_ns
            elif isinstance(opt, FirstValue):
                first_only = True
            else:
                raise ArgumentTypeError(
                    f"unknown Find option {opt!r}: use dht.ValuesFrom(t) or dht.FirstValue()"
                )
        future: Future[list[bytes]] = Future()
        future.set_running_or_notify_cancel()

        def on_value(value: bytes) -> None:
            if callback is not None:
                callback(value, None)

        def on_done(error: Exception | None, values: list[bytes]) -> None:
            _settle(future, error, values)
            if error is not None and callback is not None:
                callback(None, error)

        with nodelog.acting_as(self._tag):
            self._engine.find(key, from_ns, on_value, on_done, first_only=first_only)
        return future

    def Close(self) -> None:
        """Stop the threads, close the sockets, and end every pending Store,
        Find and request once with ``ClosedError`` (their callbacks run on the
        calling thread). Idempotent; safe to call from a callback. A call
        while another thread is closing the node returns once that is done;
        at once, though, from a library thread or from within a Close (a
        ClosedError callback), which the closing thread may be waiting for."""
        with self._close_lock:
            already = self._closed
            self._closed = True
        if already:
            # Waiting is safe only where the closing thread cannot be waiting
            # for us: not on a library thread, not inside any node's Close.
            me = threading.current_thread()
            if not getattr(_closing, "depth", 0) and me not in _library_threads:
                self._close_done.wait()
            return
        _closing.depth = getattr(_closing, "depth", 0) + 1
        try:
            with nodelog.acting_as(self._tag):
                for listener in self._listeners:
                    listener.stop()
                if self._loop is not None:
                    for sock in self._sockets:
                        self._loop.remove(sock)
                if self.config.state_path is not None:
                    with self._state_lock:  # no periodic save starts after this one
                        self._timers.cancel(self._state_timer)
                    self._save_state(closing=True)
                self._engine.close()
                release_worker(self._worker)
                if self._loop is not None:
                    release_loop(self._loop)
                else:
                    release_timer(self._timers)
                for sock in self._sockets:
                    sock.close()
                log.info("closed")
        finally:
            _closing.depth -= 1
            self._close_done.set()

    def __enter__(self) -> DHT:
        return self

    def __exit__(self, *exc: object) -> None:
        self.Close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<dht.DHT {self._id.hex()} at {self.address} ({state})>"

    # -- plumbing -------------------------------------------------------------

    def _bootstrap(self, addresses: list[Address]) -> None:
        result: Future[None] = Future()
        with nodelog.acting_as(self._tag):
            self._engine.bootstrap(addresses, lambda error: _settle(result, error, None))
            # The lookup always ends (every request has a timeout); the bound is a
            # safety net against a bug, not a behaviour.
            try:
                result.result(timeout=max(60.0, 30 * self.config.timeout))
            except Exception as error:
                log.warning("bootstrap failed: %s", error or type(error).__name__)
                raise
            log.info("joined: %d contacts", len(self._engine.table))

    def _join(self, saved: state.SavedState | None, addresses: list[Address]) -> None:
        """Join through the saved contacts, else through ``addresses``; with
        neither answering and no ``addresses``, start alone."""
        if saved is not None and saved.contacts:
            self._saved_contacts = saved.contacts
            rejoin = [address for _, address in saved.contacts[: state.REJOIN_CONTACTS]]
            try:
                self._bootstrap(rejoin)
            except BootstrapError as error:
                if addresses:
                    log.warning("%s; joining through the bootstrap addresses", error)
                else:
                    # Not fatal: after a whole network's restart, the first
                    # node back finds no one, and the others find it.
                    log.warning("%s, and no bootstrap addresses: starting alone", error)
            else:
                log.info("rejoined through %d saved contacts", len(rejoin))
                return
        if addresses:
            self._bootstrap(addresses)

    def _save_soon(self) -> None:
        """Timer thread, every ``SAVE_INTERVAL``: the save itself (file
        I/O) runs on the worker thread, not on the timer thread every node
        shares."""
        with self._state_lock:
            if self._closed:
                return
            self._worker.submit(self._save_state)
            self._state_timer = self._timers.schedule(state.SAVE_INTERVAL, self._save_soon)

    def _save_state(self, *, closing: bool = False) -> None:
        path = self.config.state_path
        assert path is not None
        with self._state_lock:
            if self._closed and not closing:  # Close saved last
                return
            contacts = state.ordered(self._engine.table.contacts()) or self._saved_contacts
            try:
                state.save(path, state.SavedState(self._id, contacts))
            except OSError as error:
                log.warning("cannot save the node's state to %s: %s", path, error)

    def _transmit(self, datagrams: list[bytes], address: Address) -> None:
        sock = next(self._send_from)
        for datagram in datagrams:
            # Never wait for buffer space: the listener keeps the socket in
            # blocking mode for its reads; a full buffer is a lost datagram.
            sock.sendto(datagram, socket.MSG_DONTWAIT, address)


_library_threads: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
"""Every listener, timer and worker thread started, weakly held."""
_closing = threading.local()
"""Per thread: how many Close calls it is running (nested through callbacks)."""


def New(cfg: Config | None = None) -> DHT:
    """Start a node and join the network through ``cfg.bootstrap_addresses``.

    Returns once the node is usable: its sockets are bound, its threads run,
    and, when bootstrap addresses are given, a FIND_NODE lookup of its own id
    through them has finished. With ``cfg.state_path`` naming a saved state,
    the node takes its saved id (unless ``cfg.local_id`` is set) and joins
    through its saved contacts first; only if none of them answers (within
    about ``3 * cfg.timeout``) does it use the bootstrap addresses, and with
    none it starts alone, logging a WARNING. Raises ``BootstrapError`` if no
    bootstrap address answered, and ``ConfigError`` for an unresolvable address or a field
    changed to an invalid value after ``cfg`` was built, and ``AddressInUse``
    when another socket holds the listen address's port; on any error no
    thread or socket is left behind. The node keeps a checked copy of
    ``cfg``: changing ``cfg`` later does not affect it.
    """
    if cfg is None:
        cfg = Config()
    else:  # a copy (of the address list too), built again: every field is checked
        bootstrap = cfg.bootstrap_addresses
        bootstrap = tuple(bootstrap) if isinstance(bootstrap, list) else bootstrap
        cfg = dataclasses.replace(cfg, bootstrap_addresses=bootstrap)
    addresses = [resolve(text, "bootstrap_addresses") for text in cfg.bootstrap_addresses]
    saved = state.load(cfg.state_path) if cfg.state_path is not None else None
    if saved is not None and cfg.local_id is None:
        cfg = dataclasses.replace(cfg, local_id=saved.node_id)  # back where it was
    node = DHT(cfg)
    try:
        with nodelog.acting_as(node._tag):
            node._join(saved, addresses)
    except BaseException as error:
        node.Close()
        if isinstance(error, TimeoutError):
            raise BootstrapError("bootstrap did not finish") from error
        raise
    return node


def limits_of(cfg: Config) -> Limits:
    """The engine's budgets from ``cfg`` (each documented on ``Config``)."""
    return Limits(
        max_store_bytes=cfg.max_store_bytes,
        max_values_per_key=cfg.max_values_per_key,
        max_ttl_ns=int(cfg.max_ttl * NS_PER_SECOND),
        max_answer_bytes=cfg.max_answer_bytes,
        answer_rate=cfg.answer_rate,
        unproven_answer_rate=cfg.unproven_answer_rate,
        max_find_values=cfg.max_find_values,
        max_find_bytes=cfg.max_find_bytes,
        trust_local_networks=cfg.trust_local_networks,
        transfer_rate=cfg.transfer_rate,
    )


def engine_options(cfg: Config) -> dict[str, Any]:
    """The ``Engine`` settings a node takes from ``cfg`` (a simulated node
    too, ``dht.sim``), beside its clocks, timers and transport."""
    return {
        "timeout": cfg.timeout,
        "schedule": Schedule(
            maintenance_interval=cfg.maintenance_interval,
            liveness_interval=cfg.liveness_interval,
            refresh_interval=cfg.refresh_interval,
            refresh_lookups=cfg.refresh_lookups,
            republish_interval=cfg.republish_interval,
            replicate_interval=cfg.replicate_interval,
            replicate_rate=cfg.replicate_rate,
            latency_aware_routing=cfg.latency_aware_routing,
        ),
        "max_pending": cfg.max_pending_requests,
        "amplification_limit": cfg.amplification_limit,
        "transfer_batch_bytes": cfg.transfer_batch_bytes,
        "transfer_interval": cfg.transfer_interval,
        "limits": limits_of(cfg),
    }


def receiver_for(cfg: Config, deliver: Deliver, engine: Engine) -> Receiver:
    """The datagram door of one socket of ``engine``'s node (of a simulated
    node: its one door), with the reassembly and rate limits of ``cfg``;
    decoded events go to ``deliver``."""
    return Receiver(
        deliver,
        engine.stats.incr,
        reassembler=Reassembler(
            max_records=cfg.reassembly_max_records,
            max_bytes=cfg.reassembly_max_bytes,
            max_records_per_source=cfg.reassembly_max_records_per_source,
            max_bytes_per_source=cfg.reassembly_max_bytes_per_source,
            awaited=engine.awaits,
        ),
        limiter=RateLimiter(cfg.request_rate, cfg.request_burst),
    )


def _stored(storage: object) -> dict[str, int]:
    """What ``storage`` holds, as far as it says (the optional ``Keys()``,
    ``len()`` and ``bytes`` of the storages shipped); what it lacks, or
    what raises (user code), is left out."""
    counts: dict[str, int] = {}
    probes: dict[str, Callable[[], object]] = {
        "stored-keys": lambda: len(storage.Keys()),  # type: ignore[attr-defined]
        "stored-values": lambda: len(storage),  # type: ignore[arg-type]
        "stored-bytes": lambda: storage.bytes,  # type: ignore[attr-defined]
    }
    for key, probe in probes.items():
        try:
            value = probe()
        except Exception as error:  # absent (AttributeError, TypeError) or failing
            log.debug("storage has no %s: %r", key, error)
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            counts[key] = value
    return counts


def default_storage(cfg: Config, clock_ns: Callable[[], int]) -> MemoryStorage:
    """The storage of a node given none, on the node's own wall clock."""
    return MemoryStorage(
        clock_ns=clock_ns,
        max_values_per_key=cfg.max_values_per_key,
        max_bytes=cfg.max_store_bytes,
        max_ttl_ns=int(cfg.max_ttl * NS_PER_SECOND),
    )


BIND_ATTEMPTS = 16
_bind_lock = threading.Lock()


def _bind(cfg: Config) -> list[socket.socket]:
    """Bind ``cfg.listeners`` sockets to the listen address, which no other
    socket may hold; raises ``AddressInUse`` naming it if one does.

    One listener binds a plain socket (no reuse option): Linux refuses the
    bind while any socket holds the port, and any later bind to it but one
    with SO_REUSEADDR on both sides, which ours never sets. Port 0 then
    gets a port that no socket holds.

    Several listeners share the port through SO_REUSEPORT, which any other
    socket of this user setting it could join (another node, in this
    process or another: the kernel would split the traffic between them).
    So a probe without reuse options binds the address first: that fails
    while any socket holds the port, SO_REUSEPORT or not. The probe is
    closed and the listeners bind in its place with SO_REUSEPORT alone
    (SO_REUSEADDR would let any UDP socket setting it share the port).
    Once they hold it, the probe or plain bind of a later node fails. The
    lock keeps nodes of this process from slipping in between a probe and
    its binds; a node of another process probing in that instant could
    still share the port. Port 0: the probe lets the kernel pick a port no
    socket holds (with SO_REUSEPORT set, Linux may pick one that another
    reuse socket of the same user holds); if something takes it before the
    listeners bind, another port is tried.
    """
    host, port = resolve(cfg.listen_address, "listen_address")
    if cfg.listeners > 1 and not _reuse_port_spreads():
        log.warning(
            "listeners=%d needs SO_REUSEPORT spreading datagrams between sockets, which "
            "this platform (%s) lacks: %s gets one socket and one listener thread",
            cfg.listeners,
            sys.platform,
            cfg.listen_address,
        )
        return _bind_all(1, cfg, host, port, reuse_port=False)
    if cfg.listeners == 1:
        return _bind_all(1, cfg, host, port, reuse_port=False)
    with _bind_lock:
        for _ in range(BIND_ATTEMPTS):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                _bind_to(probe, host, port)
                chosen = probe.getsockname()[1]
            try:
                return _bind_all(cfg.listeners, cfg, host, chosen, reuse_port=True)
            except AddressInUse:
                if port:
                    raise
    raise OSError(errno.EADDRINUSE, f"no free UDP port on {host} after {BIND_ATTEMPTS} tries")


def _reuse_port_spreads() -> bool:
    """Whether sockets bound with SO_REUSEPORT share one port's datagrams:
    Linux (3.9 on) does; Windows has no such option, macOS and the BSDs
    have one that hands a port's datagrams to one of the sockets; a kernel
    built without it refuses the option (ENOPROTOOPT)."""
    option = getattr(socket, "SO_REUSEPORT", None)
    if option is None or not sys.platform.startswith("linux"):
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.setsockopt(socket.SOL_SOCKET, option, 1)
        except OSError:
            return False
    return True


def _bind_all(
    count: int, cfg: Config, host: str, port: int, *, reuse_port: bool
) -> list[socket.socket]:
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sockets.append(sock)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, option, cfg.socket_buffer_size)
                except OSError:  # the kernel caps it; a smaller buffer still works
                    pass
            _bind_to(sock, host, port)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _bind_to(sock: socket.socket, host: str, port: int) -> None:
    try:
        sock.bind((host, port))
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise AddressInUse(f"{host}:{port}") from None
        raise


def _ttl_ns(ttl: float | timedelta) -> int:
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else ttl
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ArgumentTypeError(f"ttl must be seconds (a number or timedelta), got {ttl!r}")
    if not seconds > 0:
        raise ArgumentError(f"ttl must be a positive number of seconds, got {ttl!r}")
    if not seconds * NS_PER_SECOND <= INT64_MAX:  # also inf
        raise ArgumentError(f"ttl {ttl!r} is out of range")
    ttl_ns = int(seconds * NS_PER_SECOND)
    if ttl_ns <= 0:
        raise ArgumentError(f"ttl {ttl!r} is out of range")
    return ttl_ns


def _check_callback(callback: object, operation: str) -> None:
    if callback is None or callable(callback):
        return
    if isinstance(callback, ValuesFrom | FirstValue):
        # Go's order is Find(key, callback, opts...): an option here was
        # taken for the callback, ignored, and failed once per value.
        name = type(callback).__name__
        raise ArgumentTypeError(
            f"{operation}'s callback argument got the option {name}(): options come "
            f"after the callback, as in Go: Find(key, None, dht.{name}(...))"
        )
    raise ArgumentTypeError(
        f"{operation}'s callback must be callable or None, not {type(callback).__name__}"
    )


def _settle(
    future: Future[object] | Future[None] | Future[list[bytes]],
    error: Exception | None,
    result: object,
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]
