"""The protocol engine: one node's parts, assembled (no sockets, no threads).

The shell (``dht.node``) or the simulator (``dht.sim``) gives it a
``transport`` (send these datagrams to that address), ``timers``
(schedule/cancel a callback), a ``background`` runner for slow jobs, clocks
and an id source. Datagrams come in through a ``Receiver``
(``dht.core.receiver``), which hands the engine decoded events
(``receive``). Each concept is a part of its own:

- ``requests``: the pending-request table (send, resend, timeout, round trips);
- ``responder``: answering requests within their budgets (``answers`` says what);
- ``verifier``: proving the addresses of senders and of moved contacts;
- ``maintenance``: the periodic rounds: liveness pings, storage sweeps, and
  the tasks with intervals of their own: ``refresh`` (buckets),
  ``republish`` (what this node stored) and ``replication`` (what it holds);
- ``transfer``: key transfer to newly seen nodes;
- ``operations``: bootstrap, Store and Find, which see the node through a
  ``Context`` of its parts, not through the engine.

Threading: ``receive`` runs on listener threads, timeouts on the timer
thread, scans of the storage on the worker thread, and ``store``, ``find``
and ``bootstrap`` on user threads, all concurrently. Each part guards its
own state with small locks; no lock is held while calling a user callback
(operations deliver through a serial outbox, see ``operations.Operation``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from ..errors import ClosedError
from ..wire.codec import encode
from ..wire.events import Address, Event, Node, Value
from ..wire.framing import wire_size
from . import nodelog
from .amplification import AmplificationGuard
from .context import Context, Running
from .diversity import Diversity
from .keeper import Keeper
from .limits import Limits
from .maintenance import Maintenance
from .operations import Bootstrap, FindOperation, StoreOperation
from .refresh import BucketRefresh
from .replication import Replication
from .republish import Publications, Republisher
from .requests import PendingRequests
from .responder import Responder
from .routing import Answered, RoutingTable
from .schedule import Schedule
from .sender import Sender, Transport
from .stats import Stats
from .storage import GuardedStorage, Storage
from .timerwheel import Timers
from .transfer import KeyTransfer
from .verification import Verifier

log = nodelog.logger("dht.engine")

DEFAULT_LIMITS = Limits()
DEFAULT_SCHEDULE = Schedule()


class Engine:
    """One node's protocol logic. See the module docstring for threading."""

    def __init__(
        self,
        local_id: bytes,
        *,
        storage: Storage,
        transport: Transport,
        timers: Timers,
        background: Callable[[Callable[[], None]], None] | None = None,
        clock: Callable[[], float],
        wall_clock_ns: Callable[[], int],
        new_id: Callable[[], bytes],
        timeout: float,
        stall_after: float | None = None,
        schedule: Schedule = DEFAULT_SCHEDULE,
        max_pending: int = 8192,
        amplification_limit: int = 65536,
        transfer_batch_bytes: int = 16384,
        transfer_interval: float = 0.02,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.local_id = local_id
        self.limits = limits
        self.stats = Stats()
        self.diversity = Diversity(trust_local=limits.trust_local_networks)
        self.table = RoutingTable(local_id, diversity=self.diversity)
        self._sender = Sender(transport)
        self.requests = PendingRequests(
            local_id,
            sender=self._sender,
            timers=timers,
            clock=clock,
            new_id=new_id,
            stats=self.stats,
            timeout=timeout,
            stall_after=stall_after,
            max_pending=max_pending,
            on_unanswered=self.table.failed,
            rto_of=self.table.rto,
        )
        self.guarded_storage = GuardedStorage(storage, partial(self.stats.incr, "storage-error"))
        self.keeper = Keeper(
            self.guarded_storage,
            capacity=limits.max_store_bytes,
            values_per_key=limits.max_values_per_key,
            max_ttl_ns=limits.max_ttl_ns,
            clock_ns=wall_clock_ns,
        )

        def on_the_timer_thread(job: Callable[[], None]) -> None:
            timers.schedule(0.0, job)

        self.running = Running()
        self.context = Context(
            local_id=local_id,
            table=self.table,
            diversity=self.diversity,
            requests=self.requests,
            keeper=self.keeper,
            storage=self.guarded_storage,
            stats=self.stats,
            timers=timers,
            limits=limits,
            running=self.running,
            clock=clock,
            wall_clock_ns=wall_clock_ns,
            # Without a worker thread (a simulation in one thread), slow
            # jobs run on the timer thread.
            background=background or on_the_timer_thread,
            new_id=new_id,
            schedule=schedule,
        )
        self.amplification = AmplificationGuard(
            amplification_limit, hold_for=timeout, global_rate=limits.unproven_answer_rate
        )
        self.verifier = Verifier(self.requests, self.table, self.stats, clock)
        self.responder = Responder(
            table=self.table,
            keeper=self.keeper,
            diversity=self.diversity,
            amplification=self.amplification,
            verifier=self.verifier,
            sender=self._sender,
            stats=self.stats,
            limits=limits,
            clock=clock,
        )
        self.transfer = KeyTransfer(
            self.context,
            serve_every=schedule.maintenance_interval,
            batch_bytes=transfer_batch_bytes,
            interval=transfer_interval,
            rate=limits.transfer_rate,
        )
        self.refresh = BucketRefresh(self.context)
        self.publications = Publications(schedule.republish_interval, limits.max_store_bytes)
        self.republisher = Republisher(self.context, self.publications)
        # The first round at a random point of the interval (see replication).
        phase = int.from_bytes(new_id()[:4], "big") / 2**32
        self.replication = Replication(
            self.context,
            batch_bytes=transfer_batch_bytes,
            interval=transfer_interval,
            first_round=clock() + phase * schedule.replicate_interval,
        )
        self.keeper.on_received = self.replication.received
        self.maintenance = Maintenance(
            self.context,
            verifier=self.verifier,
            transfer=self.transfer,
            tasks=(self.refresh.run, self.republisher.run, self.replication.run),
        )
        self.timers = timers
        self.clock = clock
        self.wall_clock_ns = wall_clock_ns
        self.request = self.requests.request
        self.awaits = self.requests.awaits
        """Whether an event id is that of one of our requests awaiting its
        answer (the reassembler's test for a reply worth room)."""

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """Start the periodic maintenance."""
        self.maintenance.start()

    def close(self) -> None:
        """End every operation and pending request once with ``ClosedError``.
        Runs their callbacks on the calling thread. Idempotent."""
        if self.running.closed:
            return
        self.maintenance.stop()
        self.refresh.close()
        self.republisher.close()
        self.replication.close()
        self.keeper.on_received = None  # a cycle through the context: freed at once
        self.running.close(ClosedError("the node was closed"))
        self.requests.close()
        self._sender.close()

    @property
    def closed(self) -> bool:
        return self.running.closed

    # -- what the shell, the simulator and tests read -------------------------

    @property
    def background(self) -> Callable[[Callable[[], None]], None]:
        return self.context.background

    @background.setter
    def background(self, run: Callable[[Callable[[], None]], None]) -> None:
        self.context.background = run

    @property
    def timeout(self) -> float:
        return self.requests.timeout

    @property
    def stall_after(self) -> float:
        return self.requests.stall_after

    @property
    def max_pending(self) -> int:
        return self.requests.max_pending

    @max_pending.setter
    def max_pending(self, count: int) -> None:
        self.requests.max_pending = count

    @property
    def pending_requests(self) -> int:
        return len(self.requests)

    @property
    def smoothed_rtt(self) -> float | None:
        return self.requests.smoothed_rtt

    @smoothed_rtt.setter
    def smoothed_rtt(self, value: float | None) -> None:
        self.requests.smoothed_rtt = value

    @property
    def _transport(self) -> Transport:
        return self._sender.transport

    @_transport.setter
    def _transport(self, transport: Transport) -> None:
        self._sender.transport = transport

    def hedge_delay(self) -> float | None:
        return self.requests.hedge_delay()

    def network_size(self) -> int:
        return self.table.network_size(self.clock())

    # -- receiving ----------------------------------------------------------

    def receive(self, event: Event, source: Address, size: int | None = None) -> None:
        """Handle one decoded event that arrived from ``source`` in ``size``
        bytes of datagrams (None: as many as our encoding of it takes)."""
        if event.sender == self.local_id:
            self.stats.incr("drop-own-id")
            return
        if event.response:
            self._on_response(event, source)
        else:
            if size is None:
                size = wire_size(len(encode(event)))
            self.responder.on_request(event, source, size)

    def _on_response(self, event: Event, source: Address) -> None:
        # Claimed before its callback runs: a timeout on the timer thread or
        # a Close meanwhile then finds nothing to end twice.
        now = self.clock()
        request = self.requests.claim_answer(event, source, now)
        if request is None:
            return
        held = self.amplification.prove(source, now)
        if held:
            self.responder.send_events(held, source)
        verdict = self.table.answered(event.sender, source, now, request.rtt)
        if verdict is Answered.ELSEWHERE:
            self.verifier.confirm_move(event.sender, source)
        self.requests.answered(request, event, source)
        if verdict is Answered.NEW:
            log.debug("discovered node %s at %s:%d", event.sender.hex(), *source)
            self.transfer.offer(Node(event.sender, source))

    # -- the user's storage (user code: it may raise) ------------------------

    @property
    def storage(self) -> Storage:
        """The user's storage, as given. The engine calls it through
        ``guarded_storage``, which counts and logs what it raises."""
        return self.guarded_storage.storage

    @storage.setter
    def storage(self, storage: Storage) -> None:
        self.guarded_storage.storage = storage

    # -- operations ----------------------------------------------------------

    def bootstrap(
        self, addresses: list[Address], on_done: Callable[[Exception | None], None]
    ) -> None:
        """Join through ``addresses`` by a FIND_NODE lookup of our own id.
        ``on_done(None)`` on success, ``on_done(BootstrapError)`` if none answered.
        No key transfer while it runs (``KeyTransfer.pause``)."""
        self.transfer.pause()

        def joined(error: Exception | None) -> None:
            self.transfer.resume()
            on_done(error)

        Bootstrap(self.context, addresses, joined).start()

    def store(
        self,
        key: bytes,
        value: bytes,
        ttl_ns: int,
        on_done: Callable[[Exception | None], None],
    ) -> None:
        """Find the K closest nodes to ``key`` and store the value on them;
        republish it every ``republish_interval`` until it expires."""
        created = self.wall_clock_ns()
        stored = Value(key, value, ttl_ns, created)
        StoreOperation(self.context, stored, on_done).start()
        if not self.closed:
            dropped = self.publications.add(stored, self.clock(), created)
            if dropped:
                self.stats.incr("publications-dropped", dropped)

    def stop_republishing(self, key: bytes) -> int:
        """Republish the values stored under ``key`` no more; how many there were."""
        return self.publications.remove(key)

    def find(
        self,
        key: bytes,
        from_ns: int,
        on_value: Callable[[bytes], None],
        on_done: Callable[[Exception | None, list[bytes]], None],
        *,
        first_only: bool = False,
    ) -> None:
        """Look up ``key``: ``on_value`` once per distinct value, then ``on_done``.

        The lookup ends when the K closest nodes have answered (or failed), or,
        with ``first_only``, as soon as one node holding the key has given its
        whole answer (values other requests bring before then count too)."""
        FindOperation(self.context, key, from_ns, on_value, on_done, first_only).start()
