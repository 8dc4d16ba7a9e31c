"""Metrics: every ``stats()`` key documented, lookups counted with their
durations and nodes queried, what the storage holds, requests apart from
all events, and the Prometheus text exposition served over HTTP (parsed
here by a small parser of the format, version 0.0.4). Real nodes on
127.0.0.1; every wait bounded by a deadline."""

from __future__ import annotations

import re
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import pytest
from cluster import add_node, running_cluster, wait_until

import dht
from dht.core.stats import (
    COUNTERS,
    FAMILIES,
    LOOKUPS,
    RECENT_LOOKUPS,
    STATS,
    Stats,
    describe,
    quantile,
)
from dht.keys import random_id
from dht.metrics import CONTENT_TYPE, MetricsServer, exposition, node_exposition
from dht.wire import Event, EventType, encode, fragment

WAIT = 10.0

# ---------------------------------------------------------------------------
# A parser of the Prometheus text format 0.0.4, strict about what we emit


@dataclass
class Family:
    type: str
    help: str
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]


_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"({_NAME})(?:\{{(.*)\}})? (\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')
_SUFFIXES = {"summary": ("_sum", "_count"), "histogram": ("_sum", "_count", "_bucket")}


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), text)


def parse_exposition(text: str) -> dict[str, Family]:
    """The families of ``text``, checking: HELP and TYPE once per family and
    before its samples, the samples of a family together, counters named
    ``_total``, label syntax and escapes, values that parse as floats."""
    assert text.endswith("\n")
    families: dict[str, Family] = {}
    helps: dict[str, str] = {}
    current: str | None = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help = line[len("# HELP ") :].partition(" ")
            assert name not in helps and name not in families, f"second HELP of {name}"
            helps[name] = _unescape(help)
        elif line.startswith("# TYPE "):
            name, kind = line[len("# TYPE ") :].split(" ")
            assert kind in ("counter", "gauge", "summary", "histogram", "untyped"), line
            assert name not in families, f"second TYPE of {name}"
            assert re.fullmatch(_NAME, name), name
            if kind == "counter":
                assert name.endswith("_total"), f"counter {name} is not named _total"
            families[name] = Family(kind, helps.get(name, ""))
            current = name
        else:
            assert not line.startswith("#") and line, f"unexpected line {line!r}"
            match = _SAMPLE.fullmatch(line)
            assert match, f"malformed sample {line!r}"
            sample, labels_text, value = match.groups()
            assert current is not None, f"sample {line!r} before any TYPE"
            family = families[current]
            allowed = {current} | {current + s for s in _SUFFIXES.get(family.type, ())}
            assert sample in allowed, f"{sample} is not of the family {current} above it"
            labels: list[tuple[str, str]] = []
            rest = labels_text or ""
            while rest:
                label = _LABEL.match(rest)
                assert label, f"malformed labels in {line!r}"
                labels.append((label.group(1), _unescape(label.group(2))))
                rest = rest[label.end() :]
            key = (sample, frozenset(labels))
            assert key not in family.samples, f"duplicate sample {line!r}"
            family.samples[key] = float(value)
    return families


def scrape(url: str) -> dict[str, Family]:
    with urllib.request.urlopen(url, timeout=WAIT) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == CONTENT_TYPE
        return parse_exposition(response.read().decode())


# ---------------------------------------------------------------------------
# stats(): documented, with lookups, storage and requests


@pytest.mark.timeout(30)
def test_every_stats_key_is_documented_and_every_lookup_counted() -> None:
    with running_cluster(4) as nodes:
        origin = nodes[-1]
        for i in range(5):
            origin.Store(dht.Key(f"key {i}"), b"value %d" % i, 60).result(WAIT)
        for i in range(5):
            assert origin.Find(dht.Key(f"key {i}")).result(WAIT) == [b"value %d" % i]
        with pytest.raises(dht.NotFoundError):
            origin.Find(dht.Key("absent")).result(WAIT)
        keys = set()
        for node in nodes:
            stats = node.stats()
            keys |= set(stats)
            assert all(isinstance(value, int) for value in stats.values())
        stats = origin.stats()
    undocumented = {key for key in keys if describe(key) is None}
    assert not undocumented, f"stats() keys not in dht.core.stats.STATS: {undocumented}"
    for key, stat in {**STATS, **FAMILIES}.items():
        assert stat.meaning.endswith(".") and stat.unit, key

    assert (stats["store-done"], stats["store-failed"]) == (5, 0)
    assert (stats["find-done"], stats["find-failed"]) == (6, 1)
    assert (stats["bootstrap-done"], stats["bootstrap-failed"]) == (1, 0)
    for kind in LOOKUPS:
        p50, p99 = stats[f"{kind}-duration-p50-us"], stats[f"{kind}-duration-p99-us"]
        assert 0 < p50 <= p99 <= stats[f"{kind}-duration-total-us"] < 10**7
        q50, q99 = stats[f"{kind}-queried-p50"], stats[f"{kind}-queried-p99"]
        assert q50 <= q99 <= min(3, stats[f"{kind}-queried-total"])  # 3 other nodes
    assert stats["find-queried-p99"] == 3  # the Find of a missing key asked every one


def test_lookup_figures_keep_a_bounded_window() -> None:
    stats = Stats()
    for i in range(1, 3 * RECENT_LOOKUPS + 1):
        stats.lookup_done("find", i / 1e6, i % 10, ok=i % 4 != 0)
    assert len(stats._lookups["find"].recent) == RECENT_LOOKUPS
    snapshot = stats.lookup_figures()
    n = 3 * RECENT_LOOKUPS
    assert (snapshot["find-done"], snapshot["find-failed"]) == (n, n // 4)
    assert snapshot["find-duration-total-us"] == n * (n + 1) // 2
    # The last RECENT_LOOKUPS durations, 2049 to 3072 microseconds.
    assert snapshot["find-duration-p50-us"] == 2 * RECENT_LOOKUPS + RECENT_LOOKUPS // 2
    assert snapshot["find-duration-p99-us"] == 2 * RECENT_LOOKUPS + 1014
    assert snapshot["find-queried-p99"] == 9
    assert snapshot["store-done"] == snapshot["store-duration-p50-us"] == 0
    assert quantile([], 0.5) == 0 and quantile([7], 0.99) == 7
    assert [quantile(list(range(1, 101)), q) for q in (0.01, 0.5, 0.99, 1.0)] == [1, 50, 99, 100]


@pytest.mark.timeout(30)
def test_stored_keys_values_and_bytes_come_from_the_storage() -> None:
    node = add_node(None)
    try:
        before = node.stats()
        assert (before["stored-keys"], before["stored-values"], before["stored-bytes"]) == (0,) * 3
        for key, value in [(b"a", b"1"), (b"a", b"22"), (b"b", b"333")]:
            node.Store(dht.Key(key), value, 60).result(WAIT)
        after = node.stats()
        assert (after["stored-keys"], after["stored-values"]) == (2, 3)
        assert after["stored-bytes"] == node._engine.storage.bytes > 2 * 20 + 6  # type: ignore[attr-defined]
    finally:
        node.Close()


class _Bare:
    """A storage with only the required methods: no Keys, len or bytes."""

    def Get(self, key: bytes, from_ns: int = 0) -> list[dht.Value]:
        return []

    def Set(self, key: bytes, value: bytes, created_ns: int, ttl_ns: int) -> bool:
        return True

    def Iterate(self, fn: object) -> None:
        pass


@pytest.mark.timeout(30)
def test_a_storage_that_cannot_say_what_it_holds_leaves_its_keys_out() -> None:
    node = add_node(None, storage=_Bare())
    try:
        assert not {"stored-keys", "stored-values", "stored-bytes"} & set(node.stats())
    finally:
        node.Close()


@pytest.mark.timeout(30)
def test_requests_received_count_requests_apart_from_all_events() -> None:
    with running_cluster(2) as (a, _):
        assert wait_until(lambda: a.stats()["events-received"] > 0, WAIT)
        before = a.stats()["requests-received"]
        host, _, port = a.address.rpartition(":")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for _ in range(3):
                ping = Event(random_id(), random_id(), EventType.PING, False, None)
                for datagram in fragment(ping.id, encode(ping)):
                    sender.sendto(datagram, (host, int(port)))
            assert wait_until(lambda: a.stats()["requests-received"] - before >= 3, WAIT)
        after = a.stats()
        # a's own requests were answered: those answers are events, not requests.
        assert 0 < after["requests-received"] < after["events-received"]


# ---------------------------------------------------------------------------
# The exposition, and serving it


def test_the_exposition_of_stats_in_the_text_format() -> None:
    stats = Stats()
    stats.incr("drop-rate-limited", 7)
    stats.incr("drop-short-datagram", 2)
    stats.incr("store-refused-full")
    stats.incr("a-key-nobody-documented", 5)
    stats.lookup_done("find", 0.25, 12, ok=True)
    stats.lookup_done("find", 0.5, 20, ok=False)
    snapshot = {
        **dict.fromkeys(COUNTERS, 0),
        **stats.snapshot(),
        **stats.lookup_figures(),
        "routing-table-size": 31,
    }
    text = exposition(snapshot, {"id": "ab" * 20, "address": '127.0.0.1:1 "\\\n'})
    families = parse_exposition(text)

    info = families["dht_node_info"]
    assert info.type == "gauge"
    assert info.value("dht_node_info", id="ab" * 20, address='127.0.0.1:1 "\\\n') == 1
    drops = families["dht_drop_total"]
    assert drops.type == "counter" and "A burst is logged" in drops.help
    assert drops.value("dht_drop_total", reason="rate-limited") == 7
    assert drops.value("dht_drop_total", reason="short-datagram") == 2
    assert families["dht_store_refused_total"].value("dht_store_refused_total", reason="full") == 1
    gauge = families["dht_routing_table_size"]
    assert (gauge.type, gauge.value("dht_routing_table_size")) == ("gauge", 31)
    assert gauge.help == "Contacts in the routing table. Unit: contacts."
    counter = families["dht_request_timeout_total"]  # a counter never incremented: 0
    assert (counter.type, counter.value("dht_request_timeout_total")) == ("counter", 0)
    assert families["dht_a_key_nobody_documented"].type == "untyped"

    lookups = families["dht_lookups_total"]
    assert [lookups.value("dht_lookups_total", kind=k) for k in LOOKUPS] == [0, 2, 0]
    failures = families["dht_lookup_failures_total"]
    assert failures.value("dht_lookup_failures_total", kind="find") == 1
    duration = families["dht_lookup_duration_seconds"]
    assert duration.type == "summary"
    name = "dht_lookup_duration_seconds"
    assert duration.value(name, kind="find", quantile="0.5") == 0.25
    assert duration.value(name, kind="find", quantile="0.99") == 0.5
    assert duration.value(name + "_sum", kind="find") == 0.75
    assert duration.value(name + "_count", kind="find") == 2
    queried = families["dht_lookup_queried_nodes"]
    assert queried.value("dht_lookup_queried_nodes", kind="find", quantile="0.5") == 12
    assert queried.value("dht_lookup_queried_nodes_sum", kind="find") == 32
    # No stats key is shown twice: each lookup key went into its summary.
    assert not any("find_duration" in family for family in families)


@pytest.mark.timeout(30)
def test_a_metrics_server_serves_a_nodes_stats_over_http() -> None:
    node = add_node(None)
    try:
        node.Store(dht.Key("k"), b"v", 60).result(WAIT)
        with MetricsServer("127.0.0.1:0") as server:
            base = f"http://{server.address}"
            server.start(lambda: node_exposition(node))
            families = scrape(base + "/metrics")
            with pytest.raises(urllib.error.HTTPError) as elsewhere:
                urllib.request.urlopen(base + "/other", timeout=WAIT)
            assert elsewhere.value.code == 404
            elsewhere.value.close()
            with pytest.raises(OSError):  # the port is in use
                MetricsServer(server.address)
    finally:
        node.Close()
    assert families["dht_stored_values"].value("dht_stored_values") == 1
    assert families["dht_lookups_total"].value("dht_lookups_total", kind="store") == 1
    info = families["dht_node_info"]
    assert info.value("dht_node_info", id=node.id.hex(), address=node.address) == 1
