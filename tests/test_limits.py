"""Unit tests of the limits for an open port: rate limiter, amplification
cap, pending-request cap, receive counters (core on simnet; one real node)."""

from __future__ import annotations

import socket

import pytest
from cluster import running_cluster, wait_until
from simnet import Outcome, SimNetwork
from test_engine import HOUR_NS, scripted_pair

from dht.core.amplification import HELD_BYTES, HOST_BURST, AmplificationGuard
from dht.core.limits import Limits
from dht.core.ratelimit import RateLimiter
from dht.errors import DHTError
from dht.keys import random_id
from dht.wire import Event, EventType, FindNode, FindValue, Store, Value, encode, fragment


def test_rate_limiter_allows_the_burst_then_the_rate() -> None:
    limiter = RateLimiter(rate=10.0, burst=5)
    source = ("127.0.0.1", 1)
    assert [limiter.allow(source, 0.0) for _ in range(6)] == [True] * 5 + [False]
    assert not limiter.allow(source, 0.05)  # half a token
    assert limiter.allow(source, 0.1)  # one token earned at 10/s
    assert not limiter.allow(source, 0.1)
    assert limiter.allow(("127.0.0.1", 2), 0.1)  # other sources are independent
    # Tokens never exceed the burst, however long the source was quiet.
    assert sum(limiter.allow(source, 1000.0) for _ in range(10)) == 5


def test_rate_limiter_forgets_the_least_recently_used_source() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, max_sources=2)
    a, b, c = ("127.0.0.1", 1), ("127.0.0.1", 2), ("127.0.0.1", 3)
    assert limiter.allow(a, 0.0) and limiter.allow(b, 0.0)
    assert limiter.allow(c, 0.0)  # evicts a
    assert len(limiter) == 2
    assert limiter.allow(a, 0.0)  # a starts with a full bucket again
    assert not limiter.allow(c, 0.0)


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (1.0, 0)])
def test_rate_limiter_rejects_bad_settings(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate, burst)


def test_amplification_cap_limits_answers_to_unproven_sources() -> None:
    """A source that never answered us gets at most amplification_limit bytes."""
    net = SimNetwork()
    node = net.add_node(amplification_limit=4000)
    forged = ("127.0.0.99", 4242)  # nothing listens there: it can never answer
    sent: list[int] = []
    original = node.engine._transport

    def transport(datagrams: list[bytes], address: tuple[str, int]) -> None:
        if address == forged:
            sent.append(sum(map(len, datagrams)))
        original(datagrams, address)

    node.engine._transport = transport  # type: ignore[method-assign]
    for peer in range(30):  # give it contacts, so FIND_NODE answers are large
        node.engine.table.add_verified(random_id(), ("127.0.0.1", 20000 + peer), 0.0)
    for _ in range(50):
        request = Event(random_id(), random_id(), EventType.FIND_NODE, False, FindNode(random_id()))
        node.engine.receive(request, forged)
    answered = sum(size for size in sent if size > 200)  # the answers, not our probes
    assert 0 < answered <= 4000
    stats = node.engine.stats.snapshot()
    assert stats.get("drop-amplification", 0) + stats["held-amplification"] >= 40
    # Once spent, and nothing held for it any more (its ping went unanswered),
    # requests are refused before any work: a STORE is not applied.
    net.run_until(lambda: False, limit=2 * node.engine.timeout)
    key = random_id()
    store = Event(
        random_id(), random_id(), EventType.STORE, False, Store((Value(key, b"x", 10**12, 0),))
    )
    node.engine.receive(store, forged)
    assert node.storage.Get(key) == []


def test_sources_spent_by_one_answer_are_remembered_within_the_bound() -> None:
    """A forged source whose very first answer exceeds the cap is recorded as
    spent; those records are bounded like every other (a flood of forged
    addresses must not grow them without end)."""
    net = SimNetwork()
    node = net.add_node(amplification_limit=200)  # below one FIND_NODE answer
    node.engine.amplification.addresses = 100
    for peer in range(30):
        node.engine.table.add_verified(random_id(), ("127.0.0.1", 20000 + peer), 0.0)
    for i in range(1000):
        forged = (f"127.0.{i // 250}.{i % 250 + 1}", 4242)
        request = Event(random_id(), random_id(), EventType.FIND_NODE, False, FindNode(random_id()))
        node.engine.receive(request, forged)
    assert node.engine.stats.snapshot()["held-amplification"] == 1000
    assert node.engine.amplification.unproven_addresses <= 100
    # The cut answers are held within their byte cap.
    assert node.engine.amplification.held_bytes <= HELD_BYTES


def test_the_guard_holds_what_the_cap_cut_until_the_source_is_proven() -> None:
    guard = AmplificationGuard(1000, hold_for=2.0, held_bytes=5000)
    source, other = ("127.0.0.1", 1), ("127.0.0.1", 2)
    assert guard.allow(source, 400, 0.0, allowance=10**9).send
    crossing = guard.allow(source, 400, 0.0, allowance=10**9)
    assert crossing.send and crossing.prove  # halfway: ping it
    refused = guard.allow(source, 400, 0.0, allowance=10**9)
    assert not refused.send and refused.prove
    assert guard.spent(source, 0.0)
    rest = [[b"a" * 400], [b"b" * 300, b"c" * 100]]
    guard.hold(source, rest, now=10.0)
    assert guard.held_bytes == 800
    assert guard.prove(other, now=10.5) == []  # held per source
    assert guard.prove(source, now=11.0) == rest
    assert guard.held_bytes == 0 and not guard.spent(source, 11.0)
    assert guard.allow(source, 10**6, 0.0, allowance=10**9).send  # proven: no cap


def test_the_guard_drops_held_answers_that_are_too_old_or_too_many() -> None:
    guard = AmplificationGuard(1000, hold_for=2.0, held_bytes=5000)
    a, b, c = (("127.0.0.1", port) for port in (1, 2, 3))
    guard.hold(a, [[b"x" * 2000]], now=0.0)
    assert guard.prove(a, now=2.0) == []  # the requester has given up by now
    guard.hold(a, [[b"x" * 2000]], now=3.0)
    guard.hold(b, [[b"y" * 2000]], now=3.0)
    guard.hold(c, [[b"z" * 2000]], now=3.0)  # over the byte cap: a's goes
    assert guard.held_bytes == 4000
    assert guard.prove(a, now=3.1) == []
    assert guard.prove(b, now=3.1) == [[b"y" * 2000]]
    guard.hold(c, [[b"w" * 9000]], now=3.2)  # larger than the cap: not held
    assert guard.held_bytes == 0


def test_a_source_held_again_keeps_its_place_in_deadline_order() -> None:
    # Held again, a source moved behind later ones with its first deadline:
    # expiry stops at the first entry not yet due, so its bytes stayed
    # counted against the cap up to hold_for past its deadline.
    guard = AmplificationGuard(1000, hold_for=2.0)
    a, b, c = (("127.0.0.1", port) for port in (1, 2, 3))
    guard.hold(a, [[b"x" * 100]], now=0.0)
    guard.hold(b, [[b"y" * 100]], now=1.0)
    guard.hold(a, [[b"z" * 100]], now=1.5)
    guard.hold(c, [[b"w" * 100]], now=2.5)  # a's deadline (2.0) has passed
    assert guard.held_bytes == 200
    assert guard.prove(b, now=2.6) == [[b"y" * 100]]


def test_a_source_whose_held_answers_outgrow_the_cap_keeps_the_newest() -> None:
    # Over the cap together, the old and the new answers were all dropped.
    guard = AmplificationGuard(1000, hold_for=2.0, held_bytes=5000)
    source = ("127.0.0.1", 1)
    guard.hold(source, [[b"x" * 3000]], now=0.0)
    guard.hold(source, [[b"y" * 1000], [b"z" * 2000]], now=0.1)
    assert guard.held_bytes == 3000
    assert guard.prove(source, now=0.2) == [[b"y" * 1000], [b"z" * 2000]]


def test_holding_more_for_the_heaviest_address_evicts_another_address() -> None:
    # The heaviest IP address's only source must not be evicted to make room
    # for its own new answer: the next heaviest loses its oldest instead.
    guard = AmplificationGuard(1000, hold_for=2.0, held_bytes=5000)
    heavy, light = ("127.0.0.1", 1), ("127.0.0.2", 1)
    guard.hold(heavy, [[b"x" * 3000]], now=0.0)
    guard.hold(light, [[b"y" * 1000]], now=0.0)
    guard.hold(heavy, [[b"z" * 1500]], now=0.1)
    assert guard.held_bytes == 4500
    assert guard.prove(light, now=0.2) == []
    assert guard.prove(heavy, now=0.2) == [[b"x" * 3000], [b"z" * 1500]]


def test_a_split_answer_cut_by_the_cap_arrives_whole_once_the_requester_is_proven() -> None:
    # A requester that had not yet answered the holder got only the parts of
    # a split FIND_VALUE answer within the cap: it waited out its timeout
    # and ended with values missing.
    net = SimNetwork()
    holder = net.add_node(amplification_limit=20_000)
    key = random_id()
    values = {bytes([i]) * 30_000 for i in range(3)}  # one event each, 90 KB in all
    for value in values:
        assert holder.storage.Set(key, value, net.clock.wall_ns(), 10**12)
    requester = net.add_node()
    requester.engine.table.add_verified(holder.id, holder.address, net.clock.now)
    found = Outcome()
    requester.engine.find(key, 0, found.value, found.find_done)
    started = net.clock.now
    assert net.run_until(lambda: found.ended, limit=5.0)
    assert found.ends == [None]
    assert set(found.values) == values
    assert net.clock.now - started < requester.engine.timeout / 2  # no timeout waited
    assert holder.engine.stats.snapshot()["held-amplification"] == 1


def test_proven_sources_are_not_capped() -> None:
    net = SimNetwork()
    a = net.add_node(amplification_limit=1000)
    b = net.add_node(amplification_limit=1000)
    joined = Outcome()
    b.engine.bootstrap([a.address], joined.store_done)
    assert net.run_until(lambda: joined.ended) and joined.ends == [None]
    net.run_until(lambda: False, limit=1.0)  # a pings b; b's answer proves it
    for _ in range(20):
        found = Outcome()
        b.engine.find(random_id(), 0, found.value, found.find_done)
        assert net.run_until(lambda found=found: found.ended)
    assert "drop-amplification" not in a.engine.stats.snapshot()


def test_pending_cap_fails_requests_beyond_it_once() -> None:
    net = SimNetwork()
    node = net.add_node(max_pending=3)
    failures: list[Exception] = []
    for _ in range(5):
        node.engine.request(
            ("127.0.0.99", 1), None, EventType.PING, None, lambda *_: True, failures.append
        )
    assert node.engine.pending_requests == 3
    net.run_until(lambda: len(failures) == 5, limit=5.0)
    refused = [error for error in failures if not isinstance(error, TimeoutError)]
    assert len(failures) == 5 and len(refused) == 2
    assert all(isinstance(error, DHTError) for error in refused)
    assert node.engine.stats.snapshot()["request-refused-pending-cap"] == 2


def test_stats_count_datagrams_and_events_received() -> None:
    with running_cluster(1) as (node,):
        host, port = node.address.rsplit(":", 1)
        ping = Event(random_id(), random_id(), EventType.PING, False, None)
        [datagram] = fragment(ping.id, encode(ping))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            for data in (datagram, b"short", datagram):
                sock.sendto(data, (host, int(port)))
            assert wait_until(lambda: node.stats()["datagrams-received"] >= 3, 5.0)
        stats = node.stats()
        assert stats["events-received"] == 2
        assert stats["drop-short-datagram"] == 1
        assert stats["fragments-held"] == 0


def test_the_guard_remembers_a_bounded_number_of_proven_addresses() -> None:
    guard = AmplificationGuard(1000, hold_for=2.0, addresses=10)
    addresses = [("127.0.3.1", 5000 + i) for i in range(30)]
    for address in addresses:
        guard.prove(address, now=0.0)
    assert len(guard._proven) == 10
    # The least recently proven are forgotten: capped again.
    assert not guard.allow(addresses[0], 2000, 0.0, allowance=10**9).send
    assert guard.allow(addresses[-1], 2000, 0.0, allowance=10**9).send


def test_the_unproven_ports_of_one_ip_address_share_a_refilling_budget() -> None:
    guard = AmplificationGuard(1000, hold_for=2.0)
    burst = HOST_BURST * 1000

    def allow(address: tuple[str, int], now: float) -> bool:
        return guard.allow(address, 900, now=now, allowance=10**9).send

    sent = sum(900 for port in range(200) if allow(("127.0.0.7", port), 0.0))
    assert burst - 900 < sent <= burst  # not 200 x 900
    assert allow(("127.0.0.8", 1), 0.0)  # other addresses are apart
    assert not allow(("127.0.0.7", 500), 0.0)
    assert allow(("127.0.0.7", 500), 1.0)  # refilled, 1000 bytes/s
    # A refused address keeps what it had left of its own budget.
    assert not guard.spent(("127.0.0.7", 501), 1.0)


def test_requests_forged_from_many_ports_of_one_address_are_not_amplified_without_bound() -> None:
    # Forged FIND_VALUE requests from 200 ports of a victim's address, for a
    # key with 60 KB of values: 334 times their size went to the victim.
    net = SimNetwork()
    node = net.add_node(amplification_limit=65536)
    key = random_id()
    for i in range(3):
        assert node.storage.Set(key, bytes([i]) * 20_000, net.clock.wall_ns(), 10**12)
    to_victim = 0
    original = node.engine._transport

    def transport(datagrams: list[bytes], address: tuple[str, int]) -> None:
        nonlocal to_victim
        if address[0] == "127.0.0.66":
            to_victim += sum(map(len, datagrams))
        original(datagrams, address)

    node.engine._transport = transport  # type: ignore[method-assign]
    received = 0
    for port in range(200):
        request = Event(random_id(), random_id(), EventType.FIND_VALUE, False, FindValue(key))
        received += len(encode(request))
        node.engine.receive(request, ("127.0.0.66", 2000 + port))
    net.run_until(lambda: False, limit=5.0)  # the verification pings time out
    assert to_victim <= HOST_BURST * 65536 + 200 * 200  # the burst, and the pings
    print(f"\n{received:,} bytes of requests, {to_victim:,} bytes to the victim")


def test_the_guard_holds_every_answer_cut_for_a_source() -> None:
    guard = AmplificationGuard(1000, hold_for=2.0)
    source = ("127.0.0.1", 1)
    guard.hold(source, [[b"first"]], now=0.0)
    guard.hold(source, [[b"second", b"part"]], now=0.1)
    assert guard.prove(source, now=0.2) == [[b"first"], [b"second", b"part"]]


def test_answers_cut_for_two_requests_to_one_unproven_requester_both_arrive() -> None:
    # The guard held one answer per source (the newest), and refused the
    # second request as spent: the requester's second Find waited out its
    # timeout.
    net = SimNetwork()
    holder = net.add_node(amplification_limit=20_000)
    keys = [random_id(), random_id()]
    for key in keys:
        for i in range(2):
            assert holder.storage.Set(key, bytes([i]) * 30_000, net.clock.wall_ns(), 10**12)
    requester = net.add_node()
    requester.engine.table.add_verified(holder.id, holder.address, net.clock.now)
    found = [Outcome(), Outcome()]
    for key, outcome in zip(keys, found, strict=True):
        requester.engine.find(key, 0, outcome.value, outcome.find_done)
    started = net.clock.now
    assert net.run_until(lambda: all(outcome.ended for outcome in found), limit=5.0)
    assert [len(outcome.values) for outcome in found] == [2, 2]
    assert net.clock.now - started < requester.engine.timeout / 2  # no timeout waited


def test_the_address_holding_the_most_loses_its_held_answers_first() -> None:
    # Evicting the oldest first, a flood of large requests from one address
    # pushed out an honest requester's held answer before its proof came.
    guard = AmplificationGuard(1000, hold_for=2.0, held_bytes=10_000)
    honest = ("127.0.0.5", 7)
    guard.hold(honest, [[b"h" * 1000]], now=0.0)
    for port in range(50):
        guard.hold(("127.0.0.6", port), [[b"a" * 1000]], now=0.1)
    assert guard.held_bytes <= 10_000
    assert guard.prove(honest, now=0.2) == [[b"h" * 1000]]


def test_holding_more_for_a_source_does_not_extend_its_grace() -> None:
    # Each hold renewed the deadline, so a forged source sending a request
    # every hold_for kept spent() false for good: all its STOREs applied.
    guard = AmplificationGuard(1000, hold_for=2.0)
    source = ("127.0.0.9", 9)
    assert not guard.allow(source, 2000, now=0.0, allowance=10**9).send
    guard.hold(source, [[b"x"]], now=0.0)
    assert not guard.spent(source, now=1.0)  # a proof may be on its way
    guard.hold(source, [[b"y"]], now=1.5)
    assert guard.spent(source, now=2.1)


# ---------------------------------------------------------------------------
# Bounded answers: per request, per source, and to all unproven addresses


def test_an_answer_to_an_unproven_source_is_at_most_ten_times_its_request() -> None:
    guard = AmplificationGuard(65536, hold_for=2.0)
    source = ("203.0.113.7", 9)
    request = 168  # a Go FIND_VALUE request
    assert guard.allow(source, 10 * request, 0.0, allowance=10 * request).send
    refused = guard.allow(source, 10 * request + 1, 0.0, allowance=10 * request)
    assert not refused.send and refused.prove  # held until the source answers a ping
    assert not guard.allow(source, 600, 0.0, allowance=500).send  # what is left of it
    guard.prove(source, 0.1)
    assert guard.allow(source, 10**6, 0.1, allowance=0).send  # proven: no cap


def test_all_unproven_addresses_together_get_the_global_budget() -> None:
    """One node sent 123 MiB to 100 forged addresses in 10 s: each address
    stayed within its own cap, and nothing bounded their sum."""
    guard = AmplificationGuard(65536, hold_for=2.0, global_rate=10_000)
    sent = 0
    for step in range(100):  # 10 s
        now = step * 0.1
        for victim in range(100):
            source = (f"198.51.{victim}.1", 4000)
            if guard.allow(source, 1000, now, allowance=1680).send:
                sent += 1000
    assert 10 * 10_000 <= sent <= 10 * 10_000 + 4 * 10_000  # the rate, and one burst
    # Exhausted, requests from unproven addresses are not worth any work.
    assert guard.spent(("198.51.200.1", 1), 9.9)
    assert not guard.spent(("198.51.200.1", 1), 9.9 + 0.1)


def test_a_source_over_its_answer_rate_is_not_answered() -> None:
    """FIND_VALUE at 200/s from one proven address for a key of 2 MiB took a
    whole core: 5 ms of work and 1,450 sendto calls each."""
    net = SimNetwork()
    node = net.add_node(limits=Limits(answer_rate=1_000_000, trust_local_networks=False))
    key = random_id()
    for i in range(64):
        assert node.storage.Set(key, bytes([i]) * 32768, net.clock.wall_ns(), 10**12)
    source = ("127.0.0.66", 4000)
    node.engine.amplification.prove(source, net.clock.now)
    sent = 0
    original = node.engine._transport

    def transport(datagrams: list[bytes], address: tuple[str, int]) -> None:
        nonlocal sent
        if address == source:
            sent += sum(map(len, datagrams))
        original(datagrams, address)

    node.engine._transport = transport  # type: ignore[method-assign]
    for _ in range(200):  # 1 s of requests
        net.clock.now += 0.005
        request = Event(random_id(), random_id(), EventType.FIND_VALUE, False, FindValue(key))
        node.engine.receive(request, source)
    stats = node.engine.stats.snapshot()
    # One request's answer is cut to max_answer_bytes; in all, the burst (2 s
    # of the rate) and a second of it, plus the answer that ran into debt.
    assert sent <= 3 * 1_000_000 + node.engine.limits.max_answer_bytes + 20_000
    assert stats["drop-answer-rate"] >= 180
    # Another port of the same IP address pays from the same budget ...
    other = ("127.0.0.66", 4001)
    node.engine.amplification.prove(other, net.clock.now)
    request = Event(random_id(), random_id(), EventType.FIND_VALUE, False, FindValue(key))
    node.engine.receive(request, other)
    assert node.engine.stats.snapshot()["drop-answer-rate"] == stats["drop-answer-rate"] + 1


def test_on_a_trusted_local_network_each_address_has_its_own_answer_budget() -> None:
    net = SimNetwork()
    node = net.add_node(limits=Limits(answer_rate=1_000))
    for port in range(50):
        source = ("127.0.0.1", 30000 + port)
        node.engine.amplification.prove(source, net.clock.now)
        node.engine.receive(Event(random_id(), random_id(), EventType.PING), source)
    assert "drop-answer-rate" not in node.engine.stats.snapshot()


# ---------------------------------------------------------------------------
# Bounded Finds


def test_a_find_collects_at_most_its_caps() -> None:
    """A lying responder streamed 37 MB into one Find; a squatted key's
    holders fed one Find 1,216 values."""
    key = b"\x22" * 20
    many = FindValue(
        values=tuple(Value(key, i.to_bytes(2, "big") * 500, HOUR_NS, 0) for i in range(40)),
        found=40,
    )
    for limits, expected in ((Limits(max_find_values=10), 10), (Limits(max_find_bytes=5000), 5)):
        net, asker = scripted_pair(21, [many], limits=limits)
        outcome = Outcome()
        asker.engine.find(key, 0, outcome.value, outcome.find_done)
        assert net.run_until(lambda outcome=outcome: outcome.ended, limit=30.0)
        assert outcome.ends == [None]
        assert len(outcome.values) == len(outcome.final_values) == expected
        assert asker.engine.stats.snapshot()["find-full"] == 1


def test_a_find_drops_values_no_store_would_keep() -> None:
    key = b"\x33" * 20
    now = 1_700_001_000 * 10**9  # the simulated wall clock, about
    good = Value(key, b"good", HOUR_NS, 0)
    bad = [
        Value(key, b"expired", HOUR_NS, now - 2 * HOUR_NS),
        Value(key, b"no ttl", 0, now),
        Value(key, b"x" * 32769, HOUR_NS, now),
        Value(key, b"older than asked", HOUR_NS, now - HOUR_NS // 2),
        Value(b"\x44" * 20, b"another key", HOUR_NS, now),
    ]
    answer = FindValue(values=(good, *bad), found=len(bad) + 1)
    net, asker = scripted_pair(22, [answer])
    outcome = Outcome()
    asker.engine.find(key, now - HOUR_NS // 4, outcome.value, outcome.find_done)
    started = net.clock.now
    assert net.run_until(lambda: outcome.ended, limit=30.0)
    assert outcome.ends == [None] and outcome.values == [b"good"]
    stats = asker.engine.stats.snapshot()
    assert (stats["drop-invalid-value"], stats["drop-wrong-key"]) == (4, 1)
    # Every value that came counts towards found: no wait for more parts.
    assert net.clock.now - started < asker.engine.stall_after
