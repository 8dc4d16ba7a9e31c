"""The Go library's own benchmark shapes, run on this library.

Local store and find on a lone node; store and find from node 0 of a
100-node cluster in one process (20-byte and 2,048-byte values); routing
table micro benchmarks (closest-1, closest-20, insert, seen); codec micro
benchmarks (encode and decode of each event kind, framing of a 5 KB event).
Each reports ns/op and ops/s.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable

import dht
from dht.core.routing import RoutingTable
from dht.wire import (
    Event,
    EventType,
    FindNode,
    FindValue,
    Node,
    Reassembler,
    Store,
    Value,
    decode,
    encode,
    fragment,
)


def _measure(name: str, fn: Callable[[], object], *, seconds: float = 0.5) -> dict[str, object]:
    """Call ``fn`` repeatedly for about ``seconds``; report the mean cost."""
    fn()  # warm up
    count, t0 = 0, time.perf_counter()
    deadline = t0 + seconds
    while True:
        for _ in range(16):
            fn()
        count += 16
        now = time.perf_counter()
        if now >= deadline:
            break
    per_op = (now - t0) / count
    return {"benchmark": name, "ns_per_op": per_op * 1e9, "ops_per_s": 1 / per_op, "ops": count}


def node_shapes(cluster_size: int = 100) -> list[dict[str, object]]:
    results = []
    rng = random.Random(7)
    with dht.New(dht.Config()) as lone:
        value = rng.randbytes(20)
        results.append(
            _measure(
                "local store (20 B)",
                lambda: lone.Store(rng.randbytes(20), value, 3600).result(5),
            )
        )
        key = rng.randbytes(20)
        lone.Store(key, value, 3600).result(5)
        results.append(_measure("local find", lambda: lone.Find(key).result(5)))
    nodes = [dht.New(dht.Config())]
    try:
        for _ in range(cluster_size - 1):
            nodes.append(dht.New(dht.Config(bootstrap_addresses=[nodes[0].address])))
        first = nodes[0]
        for size in (20, 2048):
            data = rng.randbytes(size)
            keys: list[bytes] = []

            def store(data: bytes = data, keys: list[bytes] = keys) -> None:
                key = rng.randbytes(20)
                first.Store(key, data, 3600).result(10)
                keys.append(key)

            results.append(_measure(f"cluster store ({size} B, {cluster_size} nodes)", store))
            picks = iter(rng.choices(keys, k=1_000_000))
            results.append(
                _measure(
                    f"cluster find ({size} B, {cluster_size} nodes)",
                    lambda picks=picks: first.Find(next(picks), None, dht.FirstValue()).result(10),
                )
            )
    finally:
        for node in nodes:
            node.Close()
    return results


def routing_shapes(contacts: int = 1000) -> list[dict[str, object]]:
    rng = random.Random(11)
    table = RoutingTable(rng.randbytes(20))
    ids = [rng.randbytes(20) for _ in range(contacts)]
    for i, node_id in enumerate(ids):
        table.add_verified(node_id, ("127.0.0.1", 1000 + i), 0.0)
    held = [contact.id for contact in table.contacts()]
    targets = iter(rng.randbytes(20) for _ in range(10_000_000))
    fresh = iter(rng.randbytes(20) for _ in range(10_000_000))
    known = iter(rng.choices(held, k=10_000_000))
    return [
        _measure("routing closest-1", lambda: table.closest(next(targets), 1)),
        _measure("routing closest-20", lambda: table.closest(next(targets), 20)),
        _measure("routing insert", lambda: table.add_verified(next(fresh), ("127.0.0.1", 1), 1.0)),
        _measure("routing seen", lambda: table.touch(next(known), ("127.0.0.1", 1), 1.0)),
    ]


def codec_shapes() -> list[dict[str, object]]:
    def ident() -> bytes:
        return os.urandom(20)

    nodes = tuple(Node(ident(), ("127.0.0.1", 20000 + i)) for i in range(20))
    events = {
        "PING": Event(ident(), ident(), EventType.PING),
        "PONG": Event(ident(), ident(), EventType.PONG, True),
        "STORE request (64 B)": Event(
            ident(), ident(), EventType.STORE, False, Store((Value(ident(), bytes(64), 1, 2),))
        ),
        "FIND_NODE request": Event(ident(), ident(), EventType.FIND_NODE, False, FindNode(ident())),
        "FIND_NODE response (20 nodes)": Event(
            ident(), ident(), EventType.FIND_NODE, True, FindNode(nodes=nodes)
        ),
        "FIND_VALUE request": Event(
            ident(), ident(), EventType.FIND_VALUE, False, FindValue(key=ident())
        ),
        "FIND_VALUE response (1 value)": Event(
            ident(),
            ident(),
            EventType.FIND_VALUE,
            True,
            FindValue(values=(Value(ident(), bytes(64), 1, 0),), found=1),
        ),
    }
    results = []
    for name, event in events.items():
        data = encode(event)
        results.append(_measure(f"encode {name}", lambda event=event: encode(event)))
        results.append(_measure(f"decode {name}", lambda data=data: decode(data)))
    big = bytes(5 * 1024)
    event_id = ident()
    datagrams = fragment(event_id, big)
    results.append(_measure("fragment 5 KB event", lambda: fragment(event_id, big)))

    def reassemble() -> None:
        reassembler = Reassembler()
        for datagram in datagrams:
            reassembler.feed(datagram, ("127.0.0.1", 1), 0.0)

    results.append(_measure("reassemble 5 KB event", reassemble))
    return results


def run_shapes() -> list[dict[str, object]]:
    return codec_shapes() + routing_shapes() + node_shapes()


if __name__ == "__main__":
    import json
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "json":  # for python -m bench
        print(json.dumps({"rows": run_shapes()}))
        sys.exit(0)
    for row in run_shapes():
        print(
            f"{row['benchmark']:40} {row['ns_per_op']:12.0f} ns/op {row['ops_per_s']:12.0f} ops/s"
        )
