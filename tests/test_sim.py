"""The simulator (dht.sim): the same seed gives the same run, in any
process; a lossy network with churn still finds what it stored; the
network model draws what it says it draws."""

from __future__ import annotations

import itertools
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from dht.core.schedule import Schedule
from dht.sim.addresses import AddressPool
from dht.sim.churn import ExponentialSessions, WeibullSessions, parse_duration
from dht.sim.clock import VirtualClock
from dht.sim.events import EventQueue
from dht.sim.latency import ConstantLatency, LogNormalLatency, SlowNodes, address_number
from dht.sim.network import Network
from dht.sim.node import SimNode, engine_options
from dht.sim.population import Population
from dht.sim.report import TIMING_MARK, render
from dht.sim.scenario import Scenario, Simulation
from dht.sim.trace import CLOSEST, FIRST
from dht.wire.events import EventType

ROOT = Path(__file__).resolve().parent.parent

SMALL = Scenario(
    nodes=100,
    loss=0.05,
    churn=600.0,
    seed=3,
    stores=30,
    lookups=100,
    join_time=10.0,
    settle=5.0,
    store_time=10.0,
    duration=30.0,
    sample_interval=10.0,
)
SMALL_ARGS = [
    "--nodes=100", "--loss=0.05", "--churn=10m", "--seed=3", "--stores=30", "--lookups=100",
    "--join-time=10", "--settle=5", "--store-time=10", "--duration=30",
    "--sample-interval=10",
]  # fmt: skip


def report(scenario: Scenario) -> str:
    return render(Simulation(scenario).run())


def without_timing(text: str) -> str:
    return text.split(TIMING_MARK)[0]


def run_cli(args: list[str], hash_seed: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    done = subprocess.run(
        [sys.executable, "-m", "dht.sim", *args, "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
        check=True,
    )
    return done.stdout


# ---------------------------------------------------------------------------
# Determinism


@pytest.mark.timeout(180)
def test_the_same_seed_gives_the_same_report_in_any_process() -> None:
    first = report(SMALL)
    assert report(SMALL) == first
    assert "found the value" in first and TIMING_MARK not in first
    # Other processes, with other string hashes: sets and dicts of str or
    # bytes iterate in another order there, which must change nothing.
    for hash_seed in ("1", "4242"):
        assert without_timing(run_cli([*SMALL_ARGS, "--no-timing"], hash_seed)) == first
    timed = run_cli(SMALL_ARGS, "7")
    assert TIMING_MARK in timed and without_timing(timed) == first + "\n"


@pytest.mark.timeout(60)
def test_another_seed_gives_another_run() -> None:
    small = Scenario(nodes=30, stores=5, lookups=10, join_time=5.0, duration=10.0, seed=1)
    other = Scenario(nodes=30, stores=5, lookups=10, join_time=5.0, duration=10.0, seed=2)
    assert report(small) != report(other)


# ---------------------------------------------------------------------------
# A lossy network with churn


@pytest.mark.timeout(60)
def test_two_hundred_nodes_with_loss_and_churn_find_what_they_stored() -> None:
    scenario = Scenario(
        nodes=200,
        loss=0.05,
        churn=900.0,  # 15 min median: a few percent of the nodes leave meanwhile
        seed=5,
        stores=100,
        lookups=400,
        join_time=20.0,
        settle=10.0,
        store_time=20.0,
        duration=60.0,
        sample_interval=20.0,
    )
    simulation = Simulation(scenario)
    results = simulation.run()
    assert results.population["left"] > 0
    assert results.population["live_at_end"] == 200
    assert results.network["dropped"] > 0
    assert sum(s.outcome == "ok" for s in results.stores) >= 99
    for mode in (CLOSEST, FIRST):
        ran = [t for t in results.traces if t.mode == mode and t.outcome != "aborted"]
        found = [t for t in ran if t.outcome == "found"]
        assert len(ran) >= 190
        assert len(found) >= 0.99 * len(ran), (mode, [t.outcome for t in ran if t not in found])
        assert all(t.requests >= 1 or t.hops == 0 for t in found)
        assert all(t.hops is not None and t.latency is not None for t in found)
    assert all(min(sample.holders) > 0 for sample in results.samples)
    # Only the traced Finds send FIND_VALUE: what the nodes received of it is
    # what the traces counted, less what was lost on the way.
    received = simulation.tracer.events[2 * EventType.FIND_VALUE]
    counted = sum(t.requests for t in results.traces)
    assert 0.85 * counted <= received <= counted
    assert render(Simulation(scenario).run()) == render(results)


# ---------------------------------------------------------------------------
# The network model


def test_pair_latencies_are_log_normal_with_the_body_asked_for() -> None:
    model = LogNormalLatency(0.080, 0.84, seed=9)
    rng = random.Random(1)
    numbers = [rng.getrandbits(48) for _ in range(2000)]
    rtts = sorted(2 * model.one_way(a, b) for a, b in itertools.pairwise(numbers))
    median = statistics.median(rtts)
    assert 0.075 <= median <= 0.085
    assert 0.017 <= rtts[len(rtts) // 20] <= 0.024  # 5 %: about 20 ms
    assert 0.27 <= rtts[-len(rtts) // 20] <= 0.37  # 95 %: about 320 ms
    a, b = numbers[0], numbers[1]
    assert model.one_way(a, b) == model.one_way(b, a) == model.one_way(a, b)
    other = LogNormalLatency(0.080, 0.84, seed=10)
    pairs = list(itertools.pairwise(numbers[:101]))
    assert sum(model.one_way(x, y) != other.one_way(x, y) for x, y in pairs) > 90
    assert ConstantLatency(0.001).one_way(a, b) == 0.001


def test_addresses_are_distinct_loopback_hosts_over_many_networks() -> None:
    pool = AddressPool(random.Random(1))
    addresses = [pool.take() for _ in range(5000)]
    assert len(set(addresses)) == 5000
    assert all(host.startswith("127.") and not host.startswith("127.0.") for host, _ in addresses)
    networks = {host.rpartition(".")[0] for host, _ in addresses}
    assert len(networks) > 4800
    assert address_number(("127.1.2.3", 4000)) == (0x7F010203 << 16) | 4000


def _network(loss: float, seed: int = 1) -> Network[SimNode]:
    queue = EventQueue(VirtualClock())
    return Network(queue, latency=ConstantLatency(0.01), loss=loss, rng=random.Random(seed))


def test_the_loss_rate_is_the_one_asked_for() -> None:
    network = _network(0.05)
    for _ in range(20_000):
        network.transmit(("127.1.1.1", 4000), [b"x"], ("127.1.1.2", 4000))
    assert network.sent == 20_000
    assert 0.045 <= network.dropped / network.sent <= 0.055
    assert network.undeliverable == network.sent - network.dropped  # nobody there


def test_a_datagram_arrives_after_the_latency_through_the_receiver() -> None:
    network = _network(0.0)
    ids = random.Random(1)
    a, b = (
        SimNode(
            network,
            ids.randbytes(20),
            address,
            new_id=lambda: ids.randbytes(20),
            options=engine_options(timeout=2.0),
        )
        for address in [("127.1.1.1", 4000), ("127.2.2.2", 4000)]
    )
    for node in (a, b):
        network.attach(node)
    network.transmit(a.address, [b"too short"], b.address)
    network.queue.run(0.005)
    assert b.receiver.datagrams == 0
    network.queue.run(0.01)
    assert b.receiver.datagrams == 1
    assert b.engine.stats.snapshot() == {"drop-short-datagram": 1}


def test_the_event_queue_runs_in_order_and_cancels() -> None:
    clock = VirtualClock()
    queue = EventQueue(clock)
    ran: list[tuple[str, float]] = []
    queue.schedule(2.0, lambda: ran.append(("b", clock.now)))
    handle = queue.schedule(1.0, lambda: ran.append(("cancelled", clock.now)))
    queue.schedule(1.0, lambda: ran.append(("a", clock.now)))
    queue.post(2.0, lambda tag: ran.append((tag, clock.now)), "c")
    queue.cancel(handle)
    queue.cancel(handle)  # twice is harmless
    queue.cancel(None)
    queue.run(1.5)
    assert ran == [("a", 1.0)] and clock.now == 1.5
    queue.run(10.0)
    assert ran == [("a", 1.0), ("b", 2.0), ("c", 2.0)]
    assert queue.processed == 3 and len(queue) == 0


def test_many_cancelled_timers_are_swept_out() -> None:
    queue = EventQueue(VirtualClock())
    handles = [queue.schedule(1.0, lambda: None) for _ in range(20_000)]
    for handle in handles:
        queue.cancel(handle)
    assert len(queue) < 10_000


def test_churn_keeps_the_population_and_replaces_who_leaves() -> None:
    network = _network(0.0)
    event_ids = random.Random(7)
    population = Population(
        network,
        addresses=AddressPool(random.Random(2)),
        node_ids=random.Random(3),
        choices=random.Random(4),
        make_node=lambda node_id, address: SimNode(
            network,
            node_id,
            address,
            new_id=lambda: event_ids.randbytes(20),
            options=engine_options(timeout=2.0, schedule=Schedule(maintenance_interval=3600.0)),
        ),
        sessions=ExponentialSessions(60.0),
        sessions_rng=random.Random(5),
    )
    population.first()
    for i in range(1, 50):
        network.queue.post(i * 0.1, population.join)
    sizes = []
    for second in range(1, 601):
        network.queue.run(float(second))
        if second >= 10:
            sizes.append(population.members)
    assert min(sizes) == max(sizes) == 50
    assert population.left > 200  # 50 nodes, 1 min median, 10 min
    assert population.replacements == population.left
    assert population.created == 50 + population.left
    assert len(network.nodes) == 50
    assert len(population.joined) >= 45
    assert population.join_failures == 0


def test_session_lengths_have_the_median_asked_for() -> None:
    rng = random.Random(6)
    for sessions in (ExponentialSessions(3600.0), WeibullSessions(3600.0, 0.5)):
        draws = [sessions.draw(rng) for _ in range(20_000)]
        assert 3400 <= statistics.median(draws) <= 3800


def test_durations_read_with_their_units() -> None:
    assert parse_duration("1h") == 3600.0
    assert parse_duration("90") == 90.0
    assert parse_duration("2.5m") == 150.0
    assert parse_duration("80ms") == pytest.approx(0.08)
    with pytest.raises(ValueError):
        parse_duration("soon")


# ---------------------------------------------------------------------------
# The living network


def _first_holders_leave(maintenance: bool) -> Simulation:
    """100 nodes, no churn; from a minute after the first count, every 150 s
    (more than the 120 s replicate interval) a quarter of each value's first
    holders leave, until none is left."""
    scenario = Scenario(
        nodes=100,
        seed=4,
        stores=4,
        lookups=0,
        probes=4,
        join_time=10.0,
        settle=5.0,
        store_time=5.0,
        duration=1500.0,
        sample_interval=300.0,
        republish_interval=120.0,
        replicate_interval=120.0,
        maintenance=maintenance,
    )
    simulation = Simulation(scenario)

    def leave(steps_left: int) -> None:
        nodes = simulation.network.nodes
        for holders in simulation.first_holders:
            live = sorted(address for address in holders if address in nodes)
            for address in live[: -(-len(live) // steps_left)]:
                simulation.population.leave(nodes[address])

    for step in range(4):
        simulation.queue.post(simulation.timeline.lookups + 60 + 150 * step, leave, 4 - step)
    simulation.run()
    return simulation


@pytest.mark.timeout(60)
def test_replication_keeps_values_whose_first_holders_all_left_and_only_it() -> None:
    kept = _first_holders_leave(maintenance=True).results
    lost = _first_holders_leave(maintenance=False).results
    for results in (kept, lost):
        assert len(results.samples) == 6
        assert results.samples[0].holders == [20] * 4
        assert results.samples[-1].initial == [0] * 4  # every first holder left
    last = kept.samples[-1].time
    assert min(kept.samples[-1].holders) >= 10
    assert [p.outcome for p in kept.probes if p.time == last] == ["found"] * 4
    assert kept.counters["values-replicated"] > 0
    assert lost.samples[-1].holders == [0] * 4
    assert [p.outcome for p in lost.probes if p.time == last] == ["not-found"] * 4
    assert "values-replicated" not in lost.counters


def test_slow_nodes_multiply_their_pairs_round_trips_the_same_for_a_seed() -> None:
    base = LogNormalLatency(0.08, 0.84, seed=1)
    slow = SlowNodes(base, 0.1, 10.0, seed=1)
    numbers = [address_number((f"127.1.{i // 250}.{i % 250 + 1}", 4000)) for i in range(2000)]
    flags = [slow.slow(n) for n in numbers]
    assert 0.08 * len(numbers) < sum(flags) < 0.12 * len(numbers)
    assert flags == [SlowNodes(base, 0.1, 10.0, seed=1).slow(n) for n in numbers]
    assert flags != [SlowNodes(base, 0.1, 10.0, seed=2).slow(n) for n in numbers]
    for a, b in itertools.islice(itertools.combinations(numbers, 2), 5000):
        factor = 10.0 if slow.slow(a) or slow.slow(b) else 1.0
        assert slow.one_way(a, b) == pytest.approx(base.one_way(a, b) * factor)


def test_maintenance_off_and_latency_unaware_reach_the_config() -> None:
    on = Scenario().config()
    off = Scenario(maintenance=False, latency_aware=False).config()
    assert on.replicate_interval == 3600.0 and on.latency_aware_routing
    assert off.refresh_interval == off.republish_interval == off.replicate_interval == 1e9
    assert not off.latency_aware_routing
    schedule = engine_options(off)["schedule"]
    assert schedule.replicate_interval == 1e9 and not schedule.latency_aware_routing
