"""What Store and Find report, where a wrong report would show, on real UDP
sockets on 127.0.0.0/8 and real node threads.

* A Store that no node keeps fails with ``StoreError`` and 0 acknowledgements.
* A default Find returns every value of a key, also when the values sit on
  different nodes (``FirstValue`` may stop at the first holder).
* A response with the right event id and sender id from another address is
  not taken, on real sockets: a fake peer made of raw UDP sockets answers a
  node's requests first from another loopback address, then from its own.

Values are put on chosen nodes, and fake answers built, with the public wire
encoder (``dht.wire.encode``, ``fragment``, ``decode``). Every wait has a
deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import concurrent.futures
import select
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager

import pytest
from cluster import (
    RefusingStorage,
    add_node,
    close_all,
    running_cluster,
    stored_values,
    wait_until,
)

import dht
from dht.errors import ProtocolError
from dht.keys import random_id
from dht.wire import (
    HEADER_SIZE,
    Event,
    EventType,
    FindNode,
    FindValue,
    Node,
    Store,
    Value,
    decode,
    encode,
    fragment,
    parse_header,
)
from dht.wire.events import Address

RESULT = 10.0
"""Longest wait for one Store/Find/New (generous: the machine may be loaded)."""
TTL = 600
TTL_NS = TTL * 1_000_000_000


def send_event(sock: socket.socket, event: Event, address: Address) -> None:
    assert address[0].startswith("127."), address
    for datagram in fragment(event.id, encode(event)):
        sock.sendto(datagram, address)


def receive_event(sock: socket.socket, deadline: float) -> tuple[Event, Address] | None:
    """The next single-datagram event that arrives on ``sock`` before the
    deadline (datagrams that are not one are skipped), or None."""
    while (remaining := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], remaining)[0]:
            continue
        data, source = sock.recvfrom(2048)
        try:
            if parse_header(data).total != 1:
                continue
            return decode(data[HEADER_SIZE:]), source
        except ProtocolError:
            continue
    return None


# ---------------------------------------------------------------------------
# 1. A Store that no node keeps


@pytest.mark.timeout(30)
def test_a_store_kept_by_no_node_fails_with_no_acknowledgement() -> None:
    """Alone, a node whose storage refuses everything: its own copy was the
    only one tried."""
    with dht.New(dht.Config(storage=RefusingStorage(), timeout=0.5)) as node:
        errors: list[Exception | None] = []
        future = node.Store(random_id(), b"kept nowhere", TTL, errors.append)
        with pytest.raises(dht.StoreError) as raised:
            future.result(timeout=RESULT)
        error = raised.value
        assert (error.tried, error.acknowledged, error.needed) == (1, 0, 1)
        assert wait_until(lambda: errors, RESULT)
        assert errors == [error]


@pytest.mark.timeout(30)
def test_a_store_whose_peers_are_all_gone_fails_with_no_acknowledgement() -> None:
    """A node that keeps nothing itself, whose every peer was closed before
    it stores: the peers it knows are tried, none acknowledges."""
    with running_cluster(3, timeout=0.3) as nodes:
        storage = RefusingStorage()
        node = add_node(nodes[0], timeout=0.3, storage=storage)
        nodes.append(node)
        assert node.stats()["routing-table-size"] == 3
        close_all(nodes[:3])
        future = node.Store(random_id(), b"kept nowhere", TTL)
        with pytest.raises(dht.StoreError) as raised:
            future.result(timeout=RESULT)
        error = raised.value
        assert error.acknowledged == 0
        assert error.tried >= 2 and error.needed > 0, error
        assert storage.refused >= 1  # its own copy was tried, and refused


# ---------------------------------------------------------------------------
# 2. One key, different values on different nodes


def put_value(sock: socket.socket, node: dht.DHT, key: bytes, value: bytes) -> None:
    """Store ``value`` on ``node`` alone: a raw STORE from ``sock``, answered."""
    request = Event(
        random_id(),
        random_id(),
        EventType.STORE,
        payload=Store((Value(key, value, TTL_NS, time.time_ns()),)),
    )
    send_event(sock, request, node._address)
    deadline = time.monotonic() + RESULT
    # The node may also PING the unknown sender to verify it: skip that.
    while (received := receive_event(sock, deadline)) is not None:
        answer, source = received
        if answer.response and answer.id == request.id:
            assert source == node._address and answer.type is EventType.STORE
            return
    raise AssertionError(f"{node.address} did not answer the STORE")


@pytest.mark.timeout(60)
def test_a_find_returns_the_values_of_every_holder() -> None:
    """Four values of one key, each on a different node (and on no other):
    a default Find from a node that keeps nothing returns all four."""
    key = random_id()
    values = [b"value-%d-" % i + random_id() for i in range(4)]
    with running_cluster(6) as nodes:
        observer = add_node(nodes[0], storage=RefusingStorage())
        nodes.append(observer)
        holders = nodes[1:5]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            for holder, value in zip(holders, values, strict=True):
                put_value(sock, holder, key, value)
        # Each holder holds exactly its value; the two other members none.
        for holder, value in zip(holders, values, strict=True):
            assert stored_values(holder, key) == {value}
        assert not stored_values(nodes[0], key) and not stored_values(nodes[5], key)

        assert sorted(observer.Find(key).result(timeout=RESULT)) == sorted(values)
        first = observer.Find(key, None, dht.FirstValue()).result(timeout=RESULT)
        assert first and set(first) <= set(values)


# ---------------------------------------------------------------------------
# 3. A reply from the wrong address, on real sockets


def receive_queue(address: Address) -> int:
    """Bytes waiting in the receive queue of the UDP socket(s) bound to
    ``address``, from ``/proc/net/udp``."""
    host, port = address
    local = f"{socket.inet_aton(host)[::-1].hex().upper()}:{port:04X}"
    with open("/proc/net/udp") as table:
        rows = [line.split() for line in table.read().splitlines()[1:]]
    return sum(int(row[4].partition(":")[2], 16) for row in rows if row[1] == local)


class FakePeer:
    """A peer made of two raw UDP sockets: ``real``, the address the node
    is given (127.0.0.1), and ``spoof`` on another loopback address
    (127.0.0.2, with the same port when it is free). It claims one id."""

    def __init__(self) -> None:
        self.id = random_id()
        self.real = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.spoof = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.real.bind(("127.0.0.1", 0))
            self.address: Address = self.real.getsockname()
            try:
                self.spoof.bind(("127.0.0.2", self.address[1]))
            except OSError:
                self.spoof.bind(("127.0.0.2", 0))
        except BaseException:
            self.close()
            raise
        self.spoofed = 0

    def close(self) -> None:
        self.real.close()
        self.spoof.close()

    def reply(self, request: Event, payload: FindNode | FindValue | None) -> Event:
        kind = EventType.PONG if request.type is EventType.PING else request.type
        return Event(request.id, self.id, kind, True, payload)

    def answer_twice(
        self,
        request: Event,
        source: Address,
        spoofed: FindNode | FindValue,
        genuine: FindNode | FindValue,
        read: Callable[[], bool],
    ) -> None:
        """Answer ``request`` from the spoof socket (right id, right
        sender), wait (bounded) until ``read()`` says the node has taken
        that datagram in, then answer from the real address. The test
        judges what the node made of both."""
        send_event(self.spoof, self.reply(request, spoofed), source)
        self.spoofed += 1
        wait_until(read, 2.0)
        send_event(self.real, self.reply(request, genuine), source)

    def serve(
        self,
        until: Future[object],
        special: Callable[[Event, Address], bool],
    ) -> None:
        """Answer the requests that come to ``real`` until ``until`` is done:
        ``special`` answers those it returns True for; the others get an
        empty answer (a PONG, no nodes, no values)."""
        deadline = time.monotonic() + RESULT
        while not until.done() and time.monotonic() < deadline:
            received = receive_event(self.real, min(deadline, time.monotonic() + 0.05))
            if received is None:
                continue
            request, source = received
            assert source[0].startswith("127.")
            if request.response or special(request, source):
                continue
            payload: FindNode | FindValue | None = None
            if request.type is EventType.FIND_NODE:
                payload = FindNode(nodes=())
            elif request.type is EventType.FIND_VALUE:
                payload = FindValue(nodes=())
            send_event(self.real, self.reply(request, payload), source)


@contextmanager
def fake_peer() -> Iterator[FakePeer]:
    peer = FakePeer()
    try:
        yield peer
    finally:
        peer.close()


@pytest.mark.timeout(60)
def test_a_reply_from_another_address_is_not_taken_on_real_sockets() -> None:
    """A node joins through a fake peer. The peer answers its bootstrap
    FIND_NODE first from 127.0.0.2 listing ``decoy``, then from its real
    address listing ``good``; later it answers a FIND_VALUE first from
    127.0.0.2 with ``b"spoofed"``, then properly with ``b"genuine"``. The
    node learns ``good`` and not ``decoy``, and its Find returns only
    ``b"genuine"``; both spoofed answers are counted as dropped."""
    decoy_key, good_key, asked_key = random_id(), random_id(), random_id()
    nodes: list[dht.DHT] = []
    with fake_peer() as peer, concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            # Two networks of one, each holding one key; neither knows the other.
            decoy, good = add_node(None), add_node(None)
            nodes += [decoy, good]
            decoy.Store(decoy_key, b"decoy's", TTL).result(timeout=RESULT)
            good.Store(good_key, b"good's", TTL).result(timeout=RESULT)

            joining = pool.submit(
                dht.New,
                dht.Config(
                    bootstrap_addresses=[f"127.0.0.1:{peer.address[1]}"],
                    storage=RefusingStorage(),  # its Finds go through the network
                    timeout=1.0,
                ),
            )
            received = receive_event(peer.real, time.monotonic() + RESULT)
            assert received is not None, "no bootstrap request came"
            request, source = received
            assert request.type is EventType.FIND_NODE and not request.response
            # Nothing tells the fake peer when the node has handled a
            # datagram, but the listener handles what it reads before it
            # reads the next: once the queue is empty, the spoofed answer
            # was taken in before the real one arrives.
            peer.answer_twice(
                request,
                source,
                spoofed=FindNode(nodes=(Node(decoy.id, decoy._address),)),
                genuine=FindNode(nodes=(Node(good.id, good._address),)),
                read=lambda: receive_queue(source) == 0,
            )
            peer.serve(joining, lambda request, source: False)  # resends, if any
            node = joining.result(timeout=RESULT)
            nodes.append(node)
            assert node._address == source
            stats = node.stats()
            assert stats.get("drop-spoofed-response", 0) == 1
            # It knows the fake peer and good, and nothing of decoy.
            assert stats["routing-table-size"] == 2

            def find(key: bytes) -> Future[list[bytes]]:
                future = node.Find(key)
                peer.serve(future, lambda request, source: False)
                return future

            assert find(good_key).result(timeout=RESULT) == [b"good's"]
            with pytest.raises(dht.NotFoundError):
                find(decoy_key).result(timeout=RESULT)

            # A FIND_VALUE to the fake peer, a request that names the peer's
            # id: the spoofed answer carries the right sender id.
            def answer_asked(request: Event, source: Address) -> bool:
                payload = request.payload
                if not isinstance(payload, FindValue) or payload.key != asked_key:
                    return False
                before = node.stats().get("drop-spoofed-response", 0)

                def values(data: bytes) -> FindValue:
                    return FindValue(values=(Value(asked_key, data, TTL_NS, 0),), found=1)

                peer.answer_twice(
                    request,
                    source,
                    spoofed=values(b"spoofed"),
                    genuine=values(b"genuine"),
                    read=lambda: node.stats().get("drop-spoofed-response", 0) > before,
                )
                return True

            future = node.Find(asked_key)
            peer.serve(future, answer_asked)
            assert future.result(timeout=RESULT) == [b"genuine"]
            assert peer.spoofed == 2
            assert node.stats().get("drop-spoofed-response", 0) == 2
        finally:
            close_all(nodes)
