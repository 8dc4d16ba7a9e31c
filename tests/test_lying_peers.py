"""Hostile peers that send well-formed messages and lie, tried from outside:
real nodes on real UDP sockets, the attackers in another process
(``attacker.py``, built with the public wire encoder) on their own loopback
addresses, and every verdict taken from what ``Store`` and ``Find`` return
to an honest user.

As on the internet, every honest node sits on a /24 of its own
(127.1.N.1) and the attackers on theirs (127.2.N.x and up), and the nodes
run with ``trust_local_networks=False``: the per-network limits that a
cluster on one machine is spared apply to them as to an internet node.

Each test prints its figures (for the issue's before/after table); the
assertions are the acceptance bounds.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cluster import close_all, wait_until

import dht
from dht.keys import random_id
from dht.wire import Event, EventType, FindNode, decode, encode, fragment

ATTACKER = Path(__file__).with_name("attacker.py")
RESULT = 15.0
"""Longest wait for one Store or Find (generous: the machine may be loaded)."""
TTL = 3600

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------
# Honest nodes, each on a /24 of its own, and the attacker process


def honest_address(i: int) -> str:
    return f"127.1.{i}.1:0"


def internet_node(i: int, bootstrap: list[dht.DHT], **config: Any) -> dht.DHT:
    """Honest node ``i`` at 127.1.i.1, joining through ``bootstrap``."""
    cfg = dht.Config(
        listen_address=honest_address(i),
        bootstrap_addresses=[node.address for node in bootstrap],
        timeout=1.0,
        trust_local_networks=False,
        **config,
    )
    return dht.New(cfg)


@contextmanager
def internet_cluster(n: int, **config: Any) -> Iterator[list[dht.DHT]]:
    """``n`` honest nodes, each joining through up to three before it."""
    nodes: list[dht.DHT] = []
    try:
        for i in range(n):
            nodes.append(internet_node(i, nodes[-3:], **config))
        yield nodes
    finally:
        close_all(nodes)


class Attacker:
    """``attacker.py`` running a spec: ``ready`` is what it printed once its
    sockets were bound; ``finish()`` stops it and returns its report."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(ATTACKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ATTACKER.parent)},
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(spec) + "\n")
        self.process.stdin.flush()
        self.ready = self._line("ready")
        self.report: dict[str, Any] | None = None

    def _line(self, kind: str) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        message = json.loads(line) if line else {"error": "the attacker ended"}
        assert kind in message, message
        result: dict[str, Any] = message[kind]
        return result

    def wait(self, timeout: float) -> dict[str, Any]:
        """Let the attack run to its end (its work done, or ``duration_s``)
        and return its report."""
        if self.report is None:
            out, _ = self.process.communicate(timeout=timeout)
            lines = [json.loads(line) for line in out.splitlines() if line.strip()]
            reports = [line["report"] for line in lines if "report" in line]
            assert reports, lines
            self.report = reports[-1]
        return self.report

    def finish(self, timeout: float = 60.0) -> dict[str, Any]:
        """Stop the attack (if it is still running) and return its report."""
        if self.report is None:
            assert self.process.stdin is not None
            try:
                self.process.stdin.write("stop\n")
                self.process.stdin.close()
            except BrokenPipeError:
                pass  # it ended by itself
            self.report = self._line("report")
            self.process.wait(timeout)
        return self.report

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()


@contextmanager
def attacking(spec: dict[str, Any]) -> Iterator[Attacker]:
    attacker = Attacker(spec)
    try:
        yield attacker
    finally:
        attacker.kill()


def honest_holders(nodes: list[dht.DHT], key: bytes, value: bytes) -> int:
    """How many honest nodes keep ``value`` under ``key``."""
    return sum(value in {v.value for v in node._engine.storage.Get(key)} for node in nodes)


def stuff(node: dht.DHT, key: bytes | None, count: int, size: int) -> None:
    """Put ``count`` values of ``size`` bytes into ``node``'s storage, under
    ``key`` (or each under a key of its own), as if stored long ago."""
    now = time.time_ns()
    for i in range(count):
        data = (i.to_bytes(4, "big") * (size // 4 + 1))[:size]
        assert node._engine.storage.Set(key or random_id(), data, now, TTL * 10**9)


def outcomes(futures: list[Any], timeout: float = RESULT) -> list[Exception | None]:
    """What each future ended with (None: success)."""
    ended: list[Exception | None] = []
    for future in futures:
        try:
            future.result(timeout=timeout)
            ended.append(None)
        except dht.DHTError as error:
            ended.append(error)
    return ended


# ---------------------------------------------------------------------------
# Eclipse: attacker nodes answer lookups with made-up ids next to the target


def eclipse(
    honest: int, attackers: int, values: int, *, seed: int, fake: str = "close"
) -> tuple[int, int, int]:
    """``attackers`` of ``honest + attackers`` nodes, each with a pool of 16
    ports on its own IP, answer every lookup with 20 made-up ids next to
    the target (``close``: sharing 64 bits with it; ``plausible``: 8, no
    closer than the network's size allows). Returns (values stored, held by
    an honest node, found)."""
    rng = random.Random(seed)
    with internet_cluster(honest) as nodes:
        spec = {
            "mode": "eclipse",
            "hosts": [f"127.2.{j}.1" for j in range(attackers)],
            "ports_per_host": 16,
            "bootstrap": [node.address for node in nodes[::4]],
            "fake": fake,
            "rejoin_s": 0.5,
            "seed": seed,
        }
        with attacking(spec) as attacker:
            members = {member["host"] for member in attacker.ready["members"]}

            def attackers_known() -> int:
                return sum(
                    any(contact.address[0] in members for contact in node._engine.table.contacts())
                    for node in nodes
                )

            # The attackers are in the honest nodes' tables, as real members.
            assert wait_until(lambda: attackers_known() >= honest // 4, 30), attackers_known()
            known = attackers_known()
            stored = held = found = 0
            for i in range(values):
                key, value = random_id(), b"value %d" % i
                publisher, finder = rng.sample(nodes, 2)
                try:
                    publisher.Store(key, value, TTL).result(timeout=RESULT)
                except dht.StoreError:
                    continue
                stored += 1
                held += honest_holders(nodes, key, value) > 0
                try:
                    found += value in finder.Find(key).result(timeout=RESULT)
                except dht.NotFoundError:
                    pass
            report = attacker.finish()
        print(
            f"\neclipse ({fake} fakes): {attackers} of {honest + attackers} nodes lie; "
            f"{values} new values: "
            f"Store succeeded {stored}, held by an honest node {held}, found {found}; "
            f"attackers known to {known} honest nodes at the start, {attackers_known()} at the "
            f"end; attacker report: "
            f"requests {report['requests']}, stores acked {report['stores_acked']}; "
            f"implausible answers dropped "
            f"{sum(n.stats().get('drop-implausible-answer', 0) for n in nodes)}"
        )
        return stored, held, found


@pytest.mark.timeout(300)
def test_an_eclipse_by_a_tenth_of_the_nodes_leaves_every_value_findable() -> None:
    """Before: 1 liar in 50 left 33 % of new values on no honest node, 3 in
    50 left 93 %, while Store reported success every time."""
    stored, held, found = eclipse(45, 5, 100, seed=1)
    assert stored >= 99
    assert held >= 0.99 * 100 and found >= 0.99 * 100


@pytest.mark.timeout(300)
def test_an_eclipse_by_a_fifth_of_the_nodes_is_reported() -> None:
    stored, held, found = eclipse(40, 10, 100, seed=2)
    assert held >= 0.9 * stored and found >= 0.9 * stored


@pytest.mark.timeout(300)
def test_an_eclipse_with_fakes_no_closer_than_plausible_leaves_values_findable() -> None:
    """Fakes placed where real nodes could be pass the plausibility check:
    the per-network limits of lookup windows and buckets hold them off."""
    stored, held, found = eclipse(45, 5, 100, seed=3, fake="plausible")
    assert stored >= 99
    assert held >= 0.99 * 100 and found >= 0.99 * 100


# ---------------------------------------------------------------------------
# Storage flood: junk STOREs from 50 addresses fill every store


FLOOD_STORE_BYTES = 2 * 1024 * 1024
"""The store's size, scaled down from the default 256 MiB so that filling
ten of them takes seconds and little memory; the shares and their rules
are the defaults."""


@pytest.mark.timeout(300)
def test_a_storage_flood_from_fifty_addresses_refuses_no_one_else() -> None:
    """Before: after 6,000 junk STOREs from 50 addresses, Store() succeeded
    40/40 and Find found 0/40: holders acknowledged what their full stores
    refused."""
    with internet_cluster(10, max_store_bytes=FLOOD_STORE_BYTES) as nodes:
        spec = {
            "mode": "store-flood",
            "hosts": [f"127.3.{j // 5}.{j % 5 + 1}" for j in range(50)],  # 10 networks
            "targets": [node.address for node in nodes],
            "stores": 4000,
            "values_per_store": 8,
            "value_size": [100, 1000],
            "seed": 4,
        }
        with attacking(spec) as attacker:
            report = attacker.wait(timeout=240)
        assert report["stores_sent"] == 4000
        filled = [
            node._engine.keeper.shares.remote / node._engine.keeper.shares.remote_capacity
            for node in nodes
        ]
        assert min(filled) > 0.9, f"the flood did not fill the stores: {filled}"
        rng = random.Random(5)
        stored: dict[bytes, tuple[bytes, dht.DHT]] = {}
        ended = []
        for i in range(40):
            key, value = random_id(), b"legitimate %d" % i
            publisher = rng.choice(nodes)
            [error] = outcomes([publisher.Store(key, value, TTL)])
            ended.append(error)
            if error is None:
                stored[key] = (value, publisher)
        found = 0
        for key, (value, publisher) in stored.items():
            finder = rng.choice([node for node in nodes if node is not publisher])
            found += value in finder.Find(key).result(timeout=RESULT)
        print(
            f"\nstore flood: {report['stores_sent']:,} STOREs, {report['values_sent']:,} values, "
            f"{report['store_bytes'] / 2**20:.1f} MiB from 50 addresses in 10 networks "
            f"({report['acked']:,} acknowledged); stores filled to "
            f"{min(filled):.0%}-{max(filled):.0%} of the remote share; 40 new Stores: "
            f"{len(stored)} succeeded, {found} of them found; failures: "
            f"{[str(e) for e in ended if e is not None][:3]}"
        )
        assert len(stored) >= 36
        assert found == len(stored), "a Store that reported success was not found"


# ---------------------------------------------------------------------------
# Squatting: a key's cap filled before its owner stores


def squat(nodes: list[dht.DHT], key: bytes, size: int, stores: int, seed: int) -> dict[str, Any]:
    spec = {
        "mode": "store-flood",
        "hosts": [f"127.4.{j // 2}.{j % 2 + 1}" for j in range(8)],  # 4 networks
        "targets": [node.address for node in nodes],
        "stores": stores,
        "keys": [key.hex()],
        "value_size": [size, size],
        "seed": seed,
    }
    with attacking(spec) as attacker:
        return attacker.wait(timeout=240)


@pytest.mark.timeout(300)
def test_a_squatted_key_still_takes_and_returns_its_owners_value() -> None:
    """Before: 1,280 small STOREs filled a key's 64 values on its 20 holders:
    the owner's Store succeeded, its value was kept nowhere, and Find
    returned 1,216 junk values; with 32 KiB junk, one Find returned 853
    values, 28 MB."""
    with internet_cluster(20) as nodes:
        owner, finder = nodes[3], nodes[11]
        for size, seed in ((250, 6), (32768, 7)):
            key = random_id()
            report = squat(nodes, key, size, 20 * 64, seed)
            full = sum(len(node._engine.storage.Get(key)) >= 64 for node in nodes)
            value = b"the owner's value, stored after the squat"
            [error] = outcomes([owner.Store(key, value, TTL)])
            started = time.monotonic()
            values = finder.Find(key).result(timeout=RESULT)
            took = time.monotonic() - started
            collected = sum(map(len, values))
            print(
                f"\nsquat ({size}-byte junk): {report['stores_sent']:,} STOREs from 8 addresses "
                f"in 4 networks ({report['store_bytes'] / 2**20:.1f} MiB), {full} of 20 holders "
                f"at the key's cap; the owner's Store: {error or 'succeeded'}; held by "
                f"{honest_holders(nodes, key, value)} nodes; one Find: {len(values)} values, "
                f"{collected:,} bytes in {took:.2f} s, the owner's among them: {value in values}"
            )
            assert full >= 15, "the squat did not fill the key"
            assert error is None
            assert value in values
            assert collected <= finder.config.max_find_bytes
            assert len(values) <= finder.config.max_find_values


# ---------------------------------------------------------------------------
# Key transfer as an amplifier: fresh ids meeting a node that holds 20 MB


@pytest.mark.timeout(300)
def test_fresh_ids_in_waves_get_no_more_than_the_key_transfer_budget() -> None:
    """Before: 256 fresh ids a wave, one FIND_NODE and one PONG each, drew
    863 MiB from a node holding 20 MB (x4,600), filled its pending-request
    table and failed 30-60 % of its own Stores."""
    with internet_cluster(10) as nodes:
        target = nodes[0]
        stuff(target, None, 20_000, 1024)  # 20 MB
        spec = {
            "mode": "waves",
            "hosts": [f"127.5.{j}.1" for j in range(4)],
            "ports_per_host": 64,
            "target": target.address,
            "ids_per_wave": 256,
            "waves": 5,
            "wave_interval_s": 2.0,
            "ack_stores": True,
            "seed": 8,
        }
        futures = []
        with attacking(spec) as attacker:
            started = time.monotonic()
            while attacker.process.poll() is None:  # a Store every 0.2 s during the waves
                futures.append(target.Store(random_id(), b"own %d" % len(futures), TTL))
                time.sleep(0.2)
            report = attacker.wait(timeout=120)
            elapsed = time.monotonic() - started
            ended = outcomes(futures)
        totals = report["totals"]
        rate = target.config.transfer_rate
        budget = rate * (elapsed + 1) + rate  # the rate over the run, and its burst
        succeeded = sum(error is None for error in ended)
        print(
            f"\nwaves: {len(report['waves'])} waves of 256 fresh ids from 4 addresses over "
            f"{elapsed:.1f} s; key transfer sent them {totals['store_bytes'] / 2**20:.2f} MiB "
            f"({totals['values']:,} values, to {totals['ids_receiving_stores']} ids; budget "
            f"{budget / 2**20:.1f} MiB) for {report['bytes_sent'] / 2**10:.0f} KiB of attacker "
            f"traffic; the target's own Stores during the waves: {succeeded}/{len(ended)}; "
            f"its counters: "
            f"{ {k: v for k, v in target.stats().items() if k.startswith('transfer')} }"
        )
        assert len(ended) >= 40
        assert succeeded >= 0.95 * len(ended)
        assert totals["store_bytes"] <= budget * 1.1  # datagram headers and value bookkeeping


# ---------------------------------------------------------------------------
# CPU: FIND_VALUE for a key of 2 MiB at 200 a second from one address


def cpu_seconds() -> float:
    """CPU time of this process (the nodes live here), user and system."""
    times = os.times()
    return times.user + times.system


@pytest.mark.timeout(120)
def test_a_flood_of_large_finds_from_one_address_takes_a_bounded_share() -> None:
    """Before: FIND_VALUE at 200/s (36 KiB/s) from one proven address for a
    key stuffed to 2 MiB pinned the node at 1.0 CPU-s/s, and it answered no
    PING within 1 s. The PINGs' p99 (the issue's target: 50 ms) is printed,
    not asserted: timing targets do not belong in tests; none may be lost."""
    with internet_cluster(2) as nodes:
        target = nodes[0]
        key = random_id()
        stuff(target, key, 64, 32768)  # 2 MiB
        host, port = target.address.split(":")
        rtts: list[float] = []
        lost = 0
        stop = threading.Event()

        def pinger() -> None:
            nonlocal lost
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind(("127.1.200.1", 0))
                sock.settimeout(1.0)
                while not stop.is_set():
                    ping = Event(random_id(), random_id(), EventType.PING)
                    sent = time.monotonic()
                    sock.sendto(fragment(ping.id, encode(ping))[0], (host, int(port)))
                    while True:
                        try:
                            event = decode(sock.recv(2048)[24:])
                        except TimeoutError:
                            lost += 1
                            break
                        if event.response and event.id == ping.id:
                            rtts.append(time.monotonic() - sent)
                            break
                    stop.wait(0.02)

        spec = {
            "mode": "find-flood",
            "host": "127.6.0.1",
            "target": target.address,
            "key": key.hex(),
            "rate": 200,
            "duration_s": 10,
            "seed": 10,
        }
        thread = threading.Thread(target=pinger)
        thread.start()
        try:
            cpu_before, wall_before = cpu_seconds(), time.monotonic()
            with attacking(spec) as attacker:
                report = attacker.wait(timeout=60)
            cpu = (cpu_seconds() - cpu_before) / (time.monotonic() - wall_before)
        finally:
            stop.set()
            thread.join(10)
        rtts.sort()
        p99 = rtts[int(0.99 * len(rtts)) - 1] if rtts else float("inf")
        limits = target._engine.limits
        budget = limits.answer_rate * (report["elapsed"] + 2) + limits.max_answer_bytes
        print(
            f"\nfind flood: {report['requests_sent']:,} FIND_VALUEs in {report['elapsed']:.1f} s "
            f"for a key of 2 MiB; {report['answer_bytes'] / 2**20:.1f} MiB came back (budget "
            f"{budget / 2**20:.1f} MiB), the largest answer {report['largest_answer_bytes']:,} "
            f"bytes; the process used {cpu:.2f} CPU-s/s; {len(rtts)} PINGs from another address "
            f"answered, p50 {rtts[len(rtts) // 2] * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
            f"{lost} lost; drops {target.stats().get('drop-answer-rate', 0)}"
        )
        assert report["answer_bytes"] <= budget
        assert report["largest_answer_bytes"] <= limits.max_answer_bytes * 1.05 + 2048
        assert cpu <= 0.5
        assert lost == 0 and rtts


# ---------------------------------------------------------------------------
# Reflection: requests from 100 addresses that never answer


@pytest.mark.timeout(120)
def test_reflection_to_a_hundred_unproven_addresses_stays_within_the_global_budget() -> None:
    """Before: one FIND_VALUE of 184 bytes returned 64 KB (x350); 100 victim
    addresses received 123 MiB in 10 s from one node."""
    with internet_cluster(25) as nodes:
        target = nodes[0]
        key = random_id()
        stuff(target, key, 3, 20_000)
        spec = {
            "mode": "reflection",
            "hosts": [f"127.7.{j // 50}.{j % 50 + 1}" for j in range(100)],
            "targets": [target.address],
            "kind": "find_value",
            "key": key.hex(),
            "rate": 20,
            "duration_s": 10,
            "seed": 11,
        }
        with attacking(spec) as attacker:
            report = attacker.wait(timeout=60)
        rate = target.config.unproven_answer_rate
        pings = report["pings_received"] * 120  # the node's verification pings
        budget = rate * (report["elapsed"] + 4)  # 4 s of burst
        answers = report["bytes_received"] - pings
        print(
            f"\nreflection: {report['requests_sent']:,} FIND_VALUEs of {report['request_bytes']} "
            f"bytes from 100 addresses in {report['elapsed']:.1f} s; they received "
            f"{report['bytes_received'] / 2**20:.2f} MiB ({report['pings_received']} of it "
            f"verification PINGs; global budget {budget / 2**20:.2f} MiB); the largest answer "
            f"to one request {report['largest_per_request']:,} bytes "
            f"(x{report['largest_per_request'] / report['request_bytes']:.1f})"
        )
        assert answers <= budget
        assert report["largest_per_request"] <= 10 * report["request_bytes"]


@pytest.mark.timeout(60)
def test_a_go_nodes_join_request_is_answered_in_full_before_it_is_proven() -> None:
    """A full FIND_NODE answer (20 nodes) is 7.8 times Go's request: the
    10-times rule must not hold back what a joining Go node needs first."""
    from helpers import datagrams, load_vectors

    vectors = load_vectors()
    if vectors is None:
        pytest.skip("Go reference vectors not found")
    [request] = [v for v in vectors if v["name"] == "find_node_request"]
    [datagram] = datagrams(request)
    with (
        internet_cluster(25) as nodes,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as go,
    ):
        go.bind(("127.8.0.1", 0))
        go.settimeout(5)
        host, port = nodes[0].address.split(":")
        go.sendto(datagram, (host, int(port)))
        while True:
            answer = go.recv(2048)
            event = decode(answer[24:])
            if event.response:
                break
        assert event.type is EventType.FIND_NODE and isinstance(event.payload, FindNode)
        assert len(event.payload.nodes) == 20
        assert len(answer) <= 10 * len(datagram)
