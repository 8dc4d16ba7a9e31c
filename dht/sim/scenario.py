"""A whole run: build a network by joins, store values, look them up.

Timeline (virtual seconds, ``Timeline``): node 0 starts the network at 0;
the other nodes join one after another, evenly spaced over ``join_time``
(each join takes a few round trips, so many run at once); after
``settle`` seconds, ``stores`` values are stored from random joined nodes
at random times over ``store_time``; after ``settle`` more, ``lookups``
Finds of values whose Store succeeded run from random joined nodes at
random times over ``duration``, alternately K-closest and FirstValue.
Churn, if any, runs from the first join to the end. Replicas are counted
every ``sample_interval`` from the start of the lookups.

For a long run (``retention``): ``short_stores`` more values, with
``short_ttl``, are stored beside the others; at each count, ``probes``
FirstValue Finds of random stored values (and one of each short-lived
value) start from random joined nodes, which says what share of the values
a user would still find. ``maintenance`` off puts bucket refresh,
republishing and replication at ``OFF`` seconds (never, in any run);
``latency_aware`` off makes lookups ignore round trips; ``slow_fraction``
of the nodes are slow (``latency.SlowNodes``).

Randomness: one ``random.Random`` per concern, each seeded from the seed
and the concern's name (a string seed is hashed by SHA-512, so the same
in every process, whatever ``PYTHONHASHSEED``): node ids, event ids,
addresses, losses, sessions, the workload, picks of nodes. Adding, say,
a lookup does not change which ids the nodes get.
"""

from __future__ import annotations

import dataclasses
import gc
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import Config
from ..errors import ClosedError, NotFoundError
from ..wire.events import NS_PER_SECOND, Address
from .addresses import AddressPool
from .churn import ExponentialSessions, Sessions, WeibullSessions
from .clock import VirtualClock
from .events import EventQueue
from .latency import Latency, LogNormalLatency, SlowNodes
from .network import Network
from .node import SimNode, engine_options
from .population import Population
from .trace import CLOSEST, FIRST, LookupTrace, Tracer

DEFAULT_CONFIG = Config()
JOIN_RATE = 100.0
"""Joins per second when ``join_time`` is not given."""
DRAIN = 60.0
"""Seconds after the last lookup starts that a lookup still running is
waited for (then it counts as unfinished, a failure)."""
GC_INTERVAL = 60.0
FULL_GC_INTERVAL = 3600.0
"""Virtual seconds between two collections of everything (``run``)."""
"""Virtual seconds between two runs of the garbage collector (``run``)."""
PAIRS_SAMPLED = 10_000
"""Node pairs whose round trip is measured for the report."""
OFF = 1e9
"""An interval (seconds, about 32 years) that stands for "never"."""


@dataclass(frozen=True)
class Scenario:
    """What to simulate. Times are virtual seconds."""

    nodes: int = 1000
    loss: float = 0.0
    """Probability that a datagram is lost."""
    churn: float | None = None
    """Median session length; None: nobody leaves."""
    churn_shape: float | None = None
    """Weibull shape of the sessions; None: exponential."""
    seed: int = 1
    stores: int = 1000
    lookups: int = 10_000
    join_time: float | None = None
    """Seconds over which the nodes join; None: ``nodes / JOIN_RATE``, at least 30."""
    settle: float = 10.0
    """Seconds after the joins and after the stores before the next phase."""
    store_time: float = 30.0
    duration: float = 120.0
    """Seconds over which the lookups start."""
    sample_interval: float = 30.0
    """Seconds between two counts of the replicas."""
    median_rtt: float = 0.080
    """Median round trip of a pair of nodes (``LogNormalLatency``)."""
    rtt_sigma: float = 0.84
    value_size: int = 64
    """Bytes of each stored value."""
    ttl: float = 86400.0
    """Lifetime of the stored values (longer than the run: none expires)."""
    timeout: float = DEFAULT_CONFIG.timeout
    refresh_interval: float = DEFAULT_CONFIG.refresh_interval
    """Bucket refresh (``Config.refresh_interval``)."""
    republish_interval: float = DEFAULT_CONFIG.republish_interval
    replicate_interval: float = DEFAULT_CONFIG.replicate_interval
    maintenance: bool = True
    """False: bucket refresh, republishing and replication never run (their
    intervals at ``OFF``); liveness pings and key transfer still do."""
    latency_aware: bool = True
    """``Config.latency_aware_routing``."""
    trust_local_networks: bool = False
    """False: the per-address and per-/24 limits act as on the internet."""
    slow_fraction: float = 0.0
    """Share of the nodes that are slow (``latency.SlowNodes``)."""
    slow_factor: float = 10.0
    """How many times its round trip a pair with a slow node takes."""
    probes: int = 0
    """FirstValue Finds of random stored values at each count of the replicas."""
    short_stores: int = 0
    """Values stored with ``short_ttl`` beside the others (each probed at every count)."""
    short_ttl: float = 3600.0

    def config(self) -> Config:
        """The nodes' ``Config``: the defaults, with this scenario's changes."""
        config = dataclasses.replace(
            DEFAULT_CONFIG,
            timeout=self.timeout,
            refresh_interval=self.refresh_interval,
            republish_interval=self.republish_interval,
            replicate_interval=self.replicate_interval,
            latency_aware_routing=self.latency_aware,
        )
        if not self.maintenance:
            config = dataclasses.replace(
                config, refresh_interval=OFF, republish_interval=OFF, replicate_interval=OFF
            )
        return config

    def latency(self) -> Latency:
        """The network's latency model."""
        base = LogNormalLatency(self.median_rtt, self.rtt_sigma, seed=self.seed)
        if not self.slow_fraction:
            return base
        return SlowNodes(base, self.slow_fraction, self.slow_factor, seed=self.seed)

    def sessions(self) -> Sessions | None:
        if self.churn is None:
            return None
        if self.churn_shape is None:
            return ExponentialSessions(self.churn)
        return WeibullSessions(self.churn, self.churn_shape)

    def timeline(self) -> Timeline:
        join_time = self.join_time
        if join_time is None:
            join_time = max(30.0, self.nodes / JOIN_RATE)
        stores = join_time + self.settle
        lookups = stores + self.store_time + self.settle
        return Timeline(join_time, stores, lookups, lookups + self.duration)


@dataclass(frozen=True)
class Timeline:
    """When each phase begins (virtual seconds)."""

    joins_end: float
    stores: float
    lookups: float
    end: float
    """When the last lookup has started (then lookups still running drain)."""


@dataclass
class StoreRecord:
    index: int
    key: bytes
    value: bytes
    origin: Address
    start: float
    end: float | None = None
    outcome: str = "unfinished"
    """``ok``, ``failed``, ``aborted`` (the origin left) or ``unfinished``."""
    ttl: float = 0.0


@dataclass
class Probe:
    """One FirstValue Find of a stored value, started at a count."""

    time: float
    """The count's time (virtual seconds)."""
    short: bool
    """A value of ``short_stores``."""
    index: int
    """The value's ``StoreRecord.index``."""
    start: float
    end: float | None = None
    outcome: str = "unfinished"
    """``found``, ``not-found``, ``error``, ``aborted`` or ``unfinished``."""


@dataclass
class ReplicaSample:
    """Replicas of every value whose Store succeeded, at ``time``, in the
    order of the stores."""

    time: float
    holders: list[int]
    """Live nodes holding the value."""
    initial: list[int]
    """Of the nodes that held it at the first sample, those still live."""
    short: list[int] = field(default_factory=list)
    """Live nodes holding each short-lived value unexpired, in store order."""


@dataclass
class Checkpoint:
    """Running totals at a phase boundary (to tell the phases' rates apart)."""

    time: float
    node_seconds: float
    sent: int
    bytes_sent: int
    events: list[int]
    event_bytes: list[int] = field(default_factory=list)
    event_datagrams: list[int] = field(default_factory=list)


@dataclass
class Results:
    scenario: Scenario
    timeline: Timeline
    traces: list[LookupTrace] = field(default_factory=list)
    stores: list[StoreRecord] = field(default_factory=list)
    samples: list[ReplicaSample] = field(default_factory=list)
    checkpoints: dict[str, Checkpoint] = field(default_factory=dict)
    series: list[Checkpoint] = field(default_factory=list)
    """Running totals at each count of the replicas."""
    probes: list[Probe] = field(default_factory=list)
    short_stores: list[StoreRecord] = field(default_factory=list)
    pair_rtts: list[float] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    """Engine counters, summed over every node that ever ran."""
    population: dict[str, int] = field(default_factory=dict)
    network: dict[str, int] = field(default_factory=dict)
    events_processed: int = 0
    skipped_lookups: int = 0
    """Lookups not run: no value had been stored yet."""


Progress = Callable[[float, float, str], None]
"""Told ``(now, end, phase)`` every virtual second or so."""


class Simulation:
    """One run of a ``Scenario`` (``run``)."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.timeline = scenario.timeline()
        seed = scenario.seed

        def stream(name: str) -> random.Random:
            return random.Random(f"dht.sim:{seed}:{name}")

        self.clock = VirtualClock()
        self.queue = EventQueue(self.clock)
        self.latency = scenario.latency()
        self.network: Network[SimNode] = Network(
            self.queue, latency=self.latency, loss=scenario.loss, rng=stream("loss")
        )
        self.tracer = Tracer(self.queue)
        self._event_ids = stream("event-ids")
        self._options = engine_options(scenario.config())
        self._options["limits"] = dataclasses.replace(
            self._options["limits"], trust_local_networks=scenario.trust_local_networks
        )
        self.population = Population(
            self.network,
            addresses=AddressPool(stream("addresses")),
            node_ids=stream("node-ids"),
            choices=stream("choices"),
            make_node=self._make_node,
            sessions=scenario.sessions(),
            sessions_rng=stream("sessions"),
        )
        self.population.on_leave = self._on_leave
        self._workload = stream("workload")
        self._short_workload = stream("short-stores")
        self._probing = stream("probes")
        self.results = Results(scenario, self.timeline)
        self._counters: dict[str, int] = {}
        self._stored: list[StoreRecord] = []  # succeeded, in the order they did
        self._short: list[StoreRecord] = []  # short-lived ones that succeeded
        self._probes_running = 0
        self._looking: set[Address] = set()  # origins of running lookups
        self._initial: list[set[Address]] | None = None

    @property
    def first_holders(self) -> list[set[Address]]:
        """The nodes holding each stored value at the first count (in the
        order the stores succeeded); empty before it."""
        return self._initial or []

    def _make_node(self, node_id: bytes, address: Address) -> SimNode:
        randbytes = self._event_ids.randbytes
        return SimNode(
            self.network,
            node_id,
            address,
            new_id=self.tracer.id_source(address, lambda: randbytes(20)),
            options=self._options,
            observer=self.tracer,
        )

    def _on_leave(self, node: SimNode) -> None:
        counters = self._counters
        for name, count in node.engine.stats.snapshot().items():
            counters[name] = counters.get(name, 0) + count

    # -- the plan -----------------------------------------------------------------

    def _plan(self) -> None:
        scenario, timeline, post = self.scenario, self.timeline, self.queue.post
        population = self.population
        post(0.0, population.first)
        for i in range(1, scenario.nodes):
            post(i * timeline.joins_end / max(1, scenario.nodes - 1), population.join)
        workload, short = self._workload, self._short_workload
        for i, when in enumerate(
            _times(workload, timeline.stores, scenario.store_time, scenario.stores)
        ):
            post(when, self._store, i)
        short_times = _times(short, timeline.stores, scenario.store_time, scenario.short_stores)
        for i, when in enumerate(short_times):
            post(when, self._store, i, True)
        lookup_times = _times(workload, timeline.lookups, scenario.duration, scenario.lookups)
        for i, when in enumerate(lookup_times):
            post(when, self._lookup, i)
        when = timeline.lookups
        while when <= timeline.end:
            post(when, self._sample)
            when += scenario.sample_interval
        post(timeline.stores, self._checkpoint, "stores")
        post(timeline.lookups, self._checkpoint, "lookups")
        post(timeline.lookups, self._measure_pairs)

    def _totals(self) -> Checkpoint:
        network, tracer = self.network, self.tracer
        return Checkpoint(
            self.clock.now,
            self.population.node_seconds,
            network.sent,
            network.bytes_sent,
            list(tracer.events),
            list(tracer.event_bytes),
            list(tracer.event_datagrams),
        )

    def _checkpoint(self, name: str) -> None:
        self.results.checkpoints[name] = self._totals()

    def _measure_pairs(self) -> None:
        joined = self.population.joined
        if len(joined) < 2:
            return
        rng = random.Random(f"dht.sim:{self.scenario.seed}:pairs")
        number, one_way = self.network.number, self.latency.one_way
        for _ in range(PAIRS_SAMPLED):
            a, b = rng.sample(joined, 2)
            self.results.pair_rtts.append(2 * one_way(number(a.address), number(b.address)))

    # -- stores -------------------------------------------------------------------

    def _store(self, index: int, short: bool = False) -> None:
        if short:  # its own streams: the other values and origins stay the same
            joined = self.population.joined
            origin = self._short_workload.choice(joined) if joined else None
        else:
            origin = self.population.random_joined()
        if origin is None:
            return
        workload = self._short_workload if short else self._workload
        key, value = workload.randbytes(20), workload.randbytes(self.scenario.value_size)
        ttl = self.scenario.short_ttl if short else self.scenario.ttl
        record = StoreRecord(index, key, value, origin.address, self.clock.now, ttl=ttl)
        (self.results.short_stores if short else self.results.stores).append(record)

        def done(error: Exception | None) -> None:
            record.end = self.clock.now
            if error is None:
                record.outcome = "ok"
                (self._short if short else self._stored).append(record)
            else:
                record.outcome = "aborted" if isinstance(error, ClosedError) else "failed"

        origin.engine.store(key, value, int(ttl * NS_PER_SECOND), done)
        if not self.scenario.maintenance:
            # A republish interval of OFF still republishes at half the
            # remaining life (``Publications``): the user call stops it.
            origin.engine.stop_republishing(key)

    # -- lookups ------------------------------------------------------------------

    def _lookup(self, index: int) -> None:
        if not self._stored:
            self.results.skipped_lookups += 1
            return
        workload = self._workload
        record = self._stored[workload.randrange(len(self._stored))]
        origin = None
        for _ in range(10):  # an origin that runs no traced lookup already
            candidate = self.population.random_joined()
            if candidate is not None and candidate.address not in self._looking:
                origin = candidate
                break
        if origin is None:
            self.results.skipped_lookups += 1
            return
        mode = CLOSEST if index % 2 == 0 else FIRST
        trace = LookupTrace(index, mode, record.key, record.value, origin.address, self.clock.now)
        self.results.traces.append(trace)
        self._looking.add(origin.address)
        local = bool(origin.storage.Get(record.key))

        def on_value(value: bytes) -> None:
            pass

        def on_done(error: Exception | None, values: list[bytes]) -> None:
            trace.end = self.clock.now
            self._looking.discard(origin.address)
            if error is None or isinstance(error, NotFoundError):
                trace.outcome = "found" if trace.value in values else "not-found"
                if trace.outcome == "found" and trace.hops is None and local:
                    trace.hops = 0
            else:
                trace.outcome = "aborted" if isinstance(error, ClosedError) else "error"

        engine = origin.engine
        self.tracer.start(
            trace,
            lambda: [contact.id for contact in engine.table.contacts()],
            lambda: engine.find(record.key, 0, on_value, on_done, first_only=mode == FIRST),
        )

    # -- probes -------------------------------------------------------------------

    def _probe(self) -> None:
        """FirstValue Finds of ``probes`` random stored values and of every
        short-lived one, each from a random joined node (not traced)."""
        joined = self.population.joined
        if not joined:
            return
        rng, now = self._probing, self.clock.now
        chosen = rng.sample(self._stored, min(self.scenario.probes, len(self._stored)))
        for short, records in ((False, chosen), (True, self._short)):
            for record in records:
                probe = Probe(now, short, record.index, now)
                self.results.probes.append(probe)
                self._probes_running += 1
                self._find(rng.choice(joined), record, probe)

    def _find(self, origin: SimNode, record: StoreRecord, probe: Probe) -> None:
        def on_value(value: bytes) -> None:
            pass

        def on_done(error: Exception | None, values: list[bytes]) -> None:
            probe.end = self.clock.now
            self._probes_running -= 1
            if error is None or isinstance(error, NotFoundError):
                probe.outcome = "found" if record.value in values else "not-found"
            else:
                probe.outcome = "aborted" if isinstance(error, ClosedError) else "error"

        origin.engine.find(record.key, 0, on_value, on_done, first_only=True)

    # -- replicas -----------------------------------------------------------------

    def _sample(self) -> None:
        self.results.series.append(self._totals())
        if self.scenario.probes or self._short:
            self._probe()
        stored = self._stored
        index = {record.key: i for i, record in enumerate(stored)}
        holders: list[set[Address]] = [set() for _ in stored]
        for address, node in self.network.nodes.items():
            if node.online:
                for key in node.storage.Keys():
                    i = index.get(key)
                    if i is not None:
                        holders[i].add(address)
        if self._initial is None:
            self._initial = holders
        initial = self._initial
        nodes = self.network.nodes
        live = [node for node in nodes.values() if node.online]
        self.results.samples.append(
            ReplicaSample(
                self.clock.now,
                [len(h) for h in holders],
                [
                    sum(1 for a in initial[i] if a in nodes) if i < len(initial) else 0
                    for i in range(len(stored))
                ],
                [sum(1 for node in live if node.storage.Get(r.key)) for r in self._short],
            )
        )

    # -- running ------------------------------------------------------------------

    def run(self, progress: Progress | None = None, *, tick: float = 1.0) -> Results:
        """Run the scenario to its end; ``progress`` is told how far it got.

        The garbage collector's automatic runs are off meanwhile: a full
        collection walks every object of every node (2 s at 3,000 nodes),
        and the engines make few cycles (closed nodes are freed by
        reference counting). It runs every ``GC_INTERVAL`` virtual seconds
        instead, then freezes what survived (``gc.freeze``), so the next run
        walks only what is new (0.1 s); cycles among frozen objects are not
        collected until the next ``FULL_GC_INTERVAL``, when everything is
        unfrozen and collected (a day-long run otherwise kept every node
        that ever left and one of its cycles: 3.7 GB at 1,000 nodes).
        """
        self._plan()
        timeline = self.timeline
        queue = self.queue
        stop = timeline.end + DRAIN
        now = 0.0
        collected = full = 0.0
        automatic = gc.isenabled()
        gc.disable()
        try:
            while now < stop:
                now = min(now + tick, stop)
                queue.run(now)
                if now >= timeline.end and not self._looking and not self._probes_running:
                    break
                if now - collected >= GC_INTERVAL:
                    if now - full >= FULL_GC_INTERVAL:
                        gc.unfreeze()
                        full = now
                    gc.collect()
                    gc.freeze()
                    collected = now
                if progress is not None:
                    progress(now, timeline.end, self._phase(now))
        finally:
            gc.unfreeze()
            if automatic:
                gc.enable()
        self._checkpoint("end")
        self._finish()
        return self.results

    def _phase(self, now: float) -> str:
        timeline = self.timeline
        if now < timeline.joins_end:
            return "joins"
        if now < timeline.lookups:
            return "stores"
        return "lookups" if now < timeline.end else "drain"

    def _finish(self) -> None:
        results, population, network = self.results, self.population, self.network
        counters = dict(self._counters)
        for node in network.nodes.values():
            if node.online:
                for name, count in node.engine.stats.snapshot().items():
                    counters[name] = counters.get(name, 0) + count
        results.counters = dict(sorted(counters.items()))
        results.population = {
            "created": population.created,
            "left": population.left,
            "replacements": population.replacements,
            "join_retries": population.join_retries,
            "join_failures": population.join_failures,
            "live_at_end": population.members,
            "joined_at_end": len(population.joined),
        }
        results.network = {
            "sent": network.sent,
            "bytes_sent": network.bytes_sent,
            "dropped": network.dropped,
            "undeliverable": network.undeliverable,
        }
        results.events_processed = self.queue.processed


def run(scenario: Scenario, progress: Progress | None = None) -> Results:
    """Simulate ``scenario``."""
    return Simulation(scenario).run(progress)


def _times(rng: random.Random, start: float, span: float, count: int) -> list[float]:
    """``count`` random instants in ``[start, start + span)``, in order."""
    return sorted(start + rng.random() * span for _ in range(count))
