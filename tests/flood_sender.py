"""Hostile datagram sender for ``test_hostile.py``, run as a separate process.

Sending a million datagrams from the test process would compete with the
nodes for the GIL, so the tests start this script (``python flood_sender.py``)
with a JSON spec as its argument; it prints a JSON report as its last stdout line.

Modes (``spec["mode"]``):

* ``fuzz``: a pool of a few thousand distinct hostile datagrams (random bytes,
  mutated valid datagrams, valid frames carrying invalid events, forged
  responses, unsolicited requests from forged ids, duplicate fragments),
  cycled with a cheap mutation per send, then a burst of valid PINGs from one
  source per target (to reach the rate limit). PINGs a node sends to verify
  a forged sender are answered wrongly on purpose (from another socket, with
  another sender id, or with the wrong type).
* ``forged``: well-formed PING, FIND_NODE and STORE requests from many
  random sender ids (and some impersonating real nodes) at one target.
* ``fragments``: first fragments of never-completed large events.
* ``caps``: bursts of never-completed events that fill each reassembly cap
  of one listener (records and bytes, of one source and overall), in cycles
  until the test closes the sender's standard input.

Pacing: the sender never lets a target's socket queue (``rx_queue`` in
``/proc/net/udp``, found by inode) grow past a quarter of its receive buffer,
so the kernel drops nothing and every datagram sent reaches the node.

Every address, target and source, must be in 127.0.0.0/8; anything else is
refused before a single datagram is sent.
"""

from __future__ import annotations

import ipaddress
import json
import random
import select
import socket
import struct
import sys
import time
from collections import Counter
from typing import Any

from dht.errors import ProtocolError
from dht.wire import (
    HEADER_SIZE,
    MAX_CHUNK,
    MAX_EVENT_SIZE,
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

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
HEADER = struct.Struct("<20sBBH")
U32 = struct.Struct("<I")
I32 = struct.Struct("<i")
U16 = struct.Struct("<H")
TTL_NS = 60 * 1_000_000_000
SEND_DEADLINE = 30.0
"""Seconds a send may wait for room in a full socket buffer."""

Address = tuple[str, int]


def check_loopback(host: str) -> None:
    if ipaddress.ip_address(host) not in LOOPBACK:
        raise SystemExit(f"refusing to use {host}: only 127.0.0.0/8 is allowed")


# ---------------------------------------------------------------------------
# Sockets and pacing


class Pacer:
    """Keeps every target's receive queue below a quarter of its buffer."""

    def __init__(self, inodes: list[int], rcvbuf: int, stall_timeout: float) -> None:
        self.inodes = {str(inode) for inode in inodes}
        self.high = max(32 * 1024, min(rcvbuf // 4, 2 * 1024 * 1024))
        self.low = self.high // 2
        # At most 8 KiB of kernel memory per datagram (truesize) may arrive
        # between two checks without reaching half the buffer.
        self.every = max(1, min(256, (rcvbuf // 2 - self.high) // 8192))
        self.stall_timeout = stall_timeout
        self.countdown = self.every
        self.pauses = 0
        self.max_queued = 0

    def queued(self) -> int:
        with open("/proc/net/udp") as table:
            lines = table.read().splitlines()[1:]
        most = 0
        for line in lines:
            fields = line.split()
            if fields[9] in self.inodes:
                most = max(most, int(fields[4].partition(":")[2], 16))
        self.max_queued = max(self.max_queued, most)
        return most

    def wait(self, drain: Any) -> None:
        """Called after every send: checks the queues every ``every`` sends."""
        self.countdown -= 1
        if self.countdown > 0:
            return
        self.countdown = self.every
        drain()
        if self.queued() <= self.high:
            return
        self.pauses += 1
        deadline = time.monotonic() + self.stall_timeout
        while self.queued() > self.low:
            if time.monotonic() > deadline:
                raise RuntimeError(f"a target stopped reading for {self.stall_timeout} s")
            drain()
            time.sleep(0.0002)


class Sender:
    """Source sockets, the pacer, counters, and what arrives back."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.targets: list[Address] = [(t["address"][0], t["address"][1]) for t in spec["targets"]]
        for host, _ in self.targets:
            check_loopback(host)
        for host in spec["sources"]:
            check_loopback(host)
        self.socks: list[socket.socket] = []
        for host in spec["sources"]:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.socks.append(sock)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            except OSError:
                pass
            sock.bind((host, 0))
            sock.setblocking(False)
        self.pacer = Pacer(
            [t["inode"] for t in spec["targets"]], spec["rcvbuf"], spec.get("stall_timeout", 60.0)
        )
        self.sent = 0
        self.per_target: Counter[str] = Counter()
        self.categories: Counter[str] = Counter()
        self.send_retries = 0
        self.received = 0
        self.replies = 0
        self.on_request: Any = None  # fn(sock_index, datagram, source) for what arrives
        self._draining = False

    def close(self) -> None:
        for sock in self.socks:
            sock.close()

    def send(self, sock: socket.socket, data: bytes | bytearray, target: Address) -> None:
        deadline = time.monotonic() + SEND_DEADLINE
        while True:
            try:
                sock.sendto(data, target)
                break
            except BlockingIOError:
                # The send buffer is full: wait for room, but not for ever.
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no room to send for {SEND_DEADLINE} s") from None
                self.send_retries += 1
                select.select([], [sock], [], 0.01)
        self.sent += 1
        self.per_target[f"{target[0]}:{target[1]}"] += 1
        self.pacer.wait(self.drain)

    def drain(self) -> None:
        """Read (and mostly discard) what the targets sent back. Not
        re-entrant: replies sent from ``on_request`` do not drain again."""
        if self._draining:
            return
        self._draining = True
        try:
            arrived = []
            for index, sock in enumerate(self.socks):
                while True:
                    try:
                        data, source = sock.recvfrom(2048)
                    except (BlockingIOError, InterruptedError):
                        break
                    self.received += 1
                    if self.on_request is not None:
                        arrived.append((index, data, source))
            for index, data, source in arrived:
                self.on_request(index, data, source)
        finally:
            self._draining = False

    def report(self, started: float, **extra: Any) -> dict[str, Any]:
        elapsed = time.monotonic() - started
        return {
            "sent": self.sent,
            "per_target": dict(self.per_target),
            "categories": dict(self.categories),
            "elapsed": elapsed,
            "rate": self.sent / elapsed if elapsed > 0 else 0.0,
            "pauses": self.pacer.pauses,
            "max_queued": self.pacer.max_queued,
            "check_every": self.pacer.every,
            "send_retries": self.send_retries,
            "received": self.received,
            "replies": self.replies,
            **extra,
        }


# ---------------------------------------------------------------------------
# Building valid events and taking them apart


def loopback_node(rng: random.Random) -> Node:
    # Addresses carried inside payloads stay on the loopback too.
    return Node(rng.randbytes(20), (f"127.0.0.{rng.randrange(200, 255)}", rng.randrange(1, 65536)))


def valid_events(rng: random.Random) -> list[Event]:
    """Requests and responses of every type, single-datagram and fragmented."""

    def ident() -> bytes:
        return rng.randbytes(20)

    def value(size: int) -> Value:
        return Value(ident(), rng.randbytes(size), rng.randrange(1, TTL_NS), rng.randrange(10**18))

    events: list[Event] = []
    for _ in range(8):
        events += [
            Event(ident(), ident(), EventType.PING),
            Event(ident(), ident(), EventType.PONG, response=True),
            Event(ident(), ident(), EventType.STORE, payload=Store((value(rng.randrange(60)),))),
            Event(ident(), ident(), EventType.STORE, response=True),
            Event(ident(), ident(), EventType.FIND_NODE, payload=FindNode(key=ident())),
            Event(
                ident(),
                ident(),
                EventType.FIND_NODE,
                response=True,
                payload=FindNode(nodes=tuple(loopback_node(rng) for _ in range(rng.randrange(21)))),
            ),
            Event(
                ident(),
                ident(),
                EventType.FIND_VALUE,
                payload=FindValue(key=ident(), from_ns=rng.choice((0, -1, 5, 10**18))),
            ),
            Event(
                ident(),
                ident(),
                EventType.FIND_VALUE,
                response=True,
                payload=FindValue(values=(value(40), value(0)), found=rng.randrange(-3, 9)),
            ),
            Event(
                ident(),
                ident(),
                EventType.FIND_VALUE,
                response=True,
                payload=FindValue(nodes=tuple(loopback_node(rng) for _ in range(5))),
            ),
            # Fragmented: 2..6 datagrams.
            Event(
                ident(),
                ident(),
                EventType.STORE,
                payload=Store(tuple(value(rng.randrange(500, 2500)) for _ in range(3))),
            ),
            Event(
                ident(),
                ident(),
                EventType.FIND_VALUE,
                response=True,
                payload=FindValue(values=(value(rng.randrange(2000, 6000)),), found=1),
            ),
        ]
    return events


class Layout:
    """Where the fields of an encoded event are (root table and payload)."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.table = U32.unpack_from(body, 0)[0]
        self.vtable = self.table - I32.unpack_from(body, self.table)[0]
        self.payload_table = 0
        payload = self.field(self.table, self.vtable, 5)
        if payload:
            self.payload_table = payload + U32.unpack_from(body, payload)[0]

    def entry(self, vtable: int, slot: int) -> int:
        """Position of the vtable entry of ``slot`` (0 if the vtable is too short)."""
        entry = 4 + 2 * slot
        size = U16.unpack_from(self.body, vtable)[0]
        return vtable + entry if entry < size else 0

    def field(self, table: int, vtable: int, slot: int) -> int:
        entry = self.entry(vtable, slot)
        if not entry:
            return 0
        offset = U16.unpack_from(self.body, entry)[0]
        return table + offset if offset else 0

    def vector(self, table: int, vtable: int, slot: int) -> int:
        """Position of the length word of a vector field, or 0."""
        position = self.field(table, vtable, slot)
        return position + U32.unpack_from(self.body, position)[0] if position else 0

    def payload_vtable(self) -> int:
        table = self.payload_table
        return table - int(I32.unpack_from(self.body, table)[0])


def bad_events(rng: random.Random, events: list[Event]) -> list[tuple[str, bytes]]:
    """Encoded events made invalid in a targeted way, by name of the flaw."""
    out: list[tuple[str, bytes]] = []
    for event in events:
        body = encode(event)
        layout = Layout(body)

        def patched(position: int, data: bytes, body: bytes = body) -> bytes:
            patched = bytearray(body)
            patched[position : position + len(data)] = data
            return bytes(patched)

        root, vtable = layout.table, layout.vtable
        id_vector = layout.vector(root, vtable, 0)
        sender_vector = layout.vector(root, vtable, 1)
        type_position = layout.field(root, vtable, 2)
        tag_position = layout.field(root, vtable, 4)
        for length in (0, 19, 21, rng.randrange(1, 20)):
            out.append(("bad-id-length", patched(id_vector, U32.pack(length))))
            out.append(("bad-sender-length", patched(sender_vector, U32.pack(length))))
        out.append(("huge-vector", patched(sender_vector, U32.pack(0xFFFFFFF0))))
        for raw in (5, 6, 77, 127, 128, 200, 255):
            out.append(("unknown-type", patched(type_position, bytes([raw]))))
        out.append(("missing-id", patched(layout.entry(vtable, 0), U16.pack(0))))
        out.append(("missing-sender", patched(layout.entry(vtable, 1), U16.pack(0))))
        out.append(("bad-root-offset", patched(0, U32.pack(rng.randrange(len(body), 1 << 32)))))
        out.append(("bad-vtable", patched(vtable, U16.pack(rng.choice((1, 3, 0xFFFF))))))
        out.append(("bad-table-size", patched(vtable + 2, U16.pack(0xFFF0))))
        out.append(("bad-field-offset", patched(layout.entry(vtable, 1), U16.pack(0xFFF0))))
        out.append(("short-event", body[: rng.randrange(1, 8)]))
        if tag_position:
            for tag in range(0, 8):
                out.append(("payload-tag", patched(tag_position, bytes([tag]))))
            if not event.response:
                payload_entry = layout.entry(vtable, 5)
                out.append(("missing-payload", patched(payload_entry, U16.pack(0))))
                payload = layout.field(root, vtable, 5)
                out.append(("bad-payload-offset", patched(payload, U32.pack(0x7FFFFFF0))))
            if isinstance(event.payload, FindNode | FindValue) and not event.response:
                key_entry = layout.entry(layout.payload_vtable(), 0)
                out.append(("missing-key", patched(key_entry, U16.pack(0))))
                key = layout.vector(layout.payload_table, layout.payload_vtable(), 0)
                out.append(("bad-key-length", patched(key, U32.pack(rng.randrange(0, 20)))))
        if type_position and event.payload is not None:
            # A PING (or another type) carrying this payload.
            for raw in (0, 1, 2, 3, 4):
                if raw != event.type:
                    out.append(("payload-mismatch", patched(type_position, bytes([raw]))))
        if isinstance(event.payload, FindNode | FindValue) and event.payload.nodes:
            for node in event.payload.nodes[:2]:
                host, port = node.address
                address = socket.inet_aton(host) + port.to_bytes(2, "little")
                where = body.find(U32.pack(6) + address)
                if where >= 0:
                    length = rng.choice((0, 4, 5, 7, 0xFFFF))
                    out.append(("bad-address", patched(where, U32.pack(length))))
        if event.payload is not None and len(body) > 40:
            for _ in range(4):  # a random aligned word
                where = rng.randrange(0, len(body) - 4) & ~3
                out.append(("random-word", patched(where, U32.pack(rng.getrandbits(32)))))
    return out


# ---------------------------------------------------------------------------
# Fuzz mode

RAW, BYTE_FLIP, NEW_HEADER_ID, NEW_IDS, OWN_ID, GROUP, DUPLICATE = range(7)


def fuzz_pool(rng: random.Random) -> list[tuple[str, int, Any, int, int]]:
    """(category, per-send mutation, datagram(s), body id offset, sender offset)."""
    pool: list[tuple[str, int, Any, int, int]] = []

    def add(category: str, mutation: int, data: Any, id_at: int = 0, sender_at: int = 0) -> None:
        pool.append((category, mutation, data, id_at, sender_at))

    # Random bytes of random lengths 0..1600 (1473..1600 are too long).
    for _ in range(1200):
        add("random-bytes", BYTE_FLIP, rng.randbytes(rng.randrange(0, 1601)))
    # Longer than the listener's 2048-byte buffer: read truncated (D10).
    for _ in range(20):
        add("oversize", BYTE_FLIP, rng.randbytes(rng.randrange(1601, 9000)))
    # Random chunks behind consistent headers: framing passes, decoding fails,
    # or (part 1 of n) reassembly holds them.
    for _ in range(200):
        total = rng.choice((1, 1, 1, 2, 3, 46))
        size = rng.randrange((total - 1) * MAX_CHUNK + 1, min(total * MAX_CHUNK, 0xFFFF) + 1)
        part = rng.randrange(1, total + 1)
        chunk = MAX_CHUNK if part < total else size - (total - 1) * MAX_CHUNK
        add(
            "random-event",
            NEW_HEADER_ID,
            HEADER.pack(rng.randbytes(20), part, total, size) + rng.randbytes(chunk),
        )

    events = valid_events(rng)
    datagrams = [d for event in events for d in fragment(event.id, encode(event))]
    # Mutated valid datagrams.
    for _ in range(1500):
        base = bytearray(rng.choice(datagrams))
        how = rng.randrange(6)
        if how == 0:  # bit flips
            for _ in range(rng.randrange(1, 9)):
                base[rng.randrange(len(base))] ^= 1 << rng.randrange(8)
            category = "bit-flips"
        elif how == 1:  # truncation
            base = base[: rng.randrange(len(base))]
            category = "truncated"
        elif how == 2:  # extension
            base += rng.randbytes(rng.randrange(1, 300))
            category = "extended"
        elif how == 3:  # swapped headers
            other = rng.choice(datagrams)
            base = bytearray(other[:HEADER_SIZE]) + base[HEADER_SIZE:]
            category = "swapped-header"
        elif how == 4:  # header fields
            base[20] = rng.randrange(256)
            base[21] = rng.randrange(256)
            if rng.random() < 0.5:
                base[22:24] = rng.randbytes(2)
            category = "header-fields"
        else:  # a byte run overwritten inside the body
            start = rng.randrange(HEADER_SIZE, len(base))
            run = rng.randrange(1, 16)
            base[start : start + run] = rng.randbytes(len(base[start : start + run]))
            category = "body-overwrite"
        add(category, BYTE_FLIP if rng.random() < 0.3 else NEW_HEADER_ID, bytes(base))
    # Valid frames carrying invalid events.
    for flaw, body in bad_events(rng, events[:22]):
        for datagram in fragment(rng.randbytes(20), body)[:1]:
            add("bad-event:" + flaw, NEW_HEADER_ID, datagram)
    # Forged responses: well-formed, with random event ids (patched per send).
    for event in events:
        if not event.response:
            continue
        body = encode(event)
        parts = fragment(event.id, body)
        if len(parts) == 1:
            add("forged-response", NEW_IDS, parts[0], HEADER_SIZE + body.find(event.id))
        else:
            add("forged-response-fragmented", GROUP, parts)
    # Unsolicited requests from random forged senders (they get answers and
    # verification PINGs), and some claiming the target's own id.
    for event in events:
        if event.response:
            continue
        body = encode(event)
        parts = fragment(event.id, body)
        if len(parts) == 1:
            at_id = HEADER_SIZE + body.find(event.id)
            at_sender = HEADER_SIZE + body.find(event.sender)
            add("forged-request", NEW_IDS, parts[0], at_id, at_sender)
            add("own-id-request", OWN_ID, parts[0], at_id, at_sender)
        else:
            add("forged-request-fragmented", GROUP, parts)
            add("duplicate-fragment", DUPLICATE, parts[0])
    return pool


def schedule(rng: random.Random, pool: list[tuple[str, int, Any, int, int]]) -> list[int]:
    """Pool indices in sending order, weighted by kind, shuffled."""
    weights = {
        "random-bytes": 2,
        "oversize": 4,
        "random-event": 3,
        "forged-response": 30,
        "forged-response-fragmented": 4,
        "forged-request": 30,
        "own-id-request": 3,
        "forged-request-fragmented": 4,
        "duplicate-fragment": 4,
    }
    order: list[int] = []
    for index, (category, *_) in enumerate(pool):
        weight = weights.get(category, 1)
        if category.startswith("bad-event:"):
            weight = 2
        order += [index] * weight
    rng.shuffle(order)
    return order


def run_fuzz(spec: dict[str, Any], sender: Sender) -> dict[str, Any]:
    rng = random.Random(spec["seed"])
    pool = fuzz_pool(rng)
    order = schedule(rng, pool)
    target_ids = [bytes.fromhex(t["id"]) for t in spec["targets"]]
    targets = sender.targets
    socks = sender.socks
    send = sender.send
    categories = sender.categories
    getrandbits = rng.getrandbits
    randbytes = rng.randbytes
    total = spec["count"] - spec["hot_pings"] * len(targets)
    # Half the forged requests claim a random id, half the sending socket's
    # own fixed id (its persona).
    personas = [randbytes(20) for _ in socks]

    def answer_wrongly(index: int, data: bytes, source: Address) -> None:
        """A target PINGs a forged sender to verify it: answer so that the
        answer must be dropped (spoofed source or sender, or wrong type)."""
        check_loopback(source[0])
        if source not in targets:
            return
        try:
            header = parse_header(data)
            if header.total != 1:
                return
            event = decode(data[HEADER_SIZE:])
        except ProtocolError:
            return
        if event.response or event.type is not EventType.PING:
            return
        how = sender.replies % 3
        sock = socks[index]
        if how == 0:  # the right answer, from another address
            sock = socks[(index + 1) % len(socks)]
            reply = Event(event.id, rng.randbytes(20), EventType.PONG, True, None)
            category = "reply-from-other-address"
        elif how == 1:  # from the right address, another sender id
            reply = Event(event.id, rng.randbytes(20), EventType.PONG, True, None)
            category = "reply-with-other-sender"
        else:  # the wrong type, claiming this socket's persona (the id the
            # target is verifying, when the PING is about the persona)
            reply = Event(event.id, personas[index], EventType.STORE, True, None)
            category = "reply-of-wrong-type"
        sender.replies += 1
        categories[category] += 1
        for datagram in fragment(reply.id, encode(reply)):
            send(sock, datagram, source)

    sender.on_request = answer_wrongly
    n_targets, n_socks, n_order = len(targets), len(socks), len(order)
    i = 0
    while sender.sent < total:
        category, mutation, data, id_at, sender_at = pool[order[i % n_order]]
        target = i % n_targets
        source = i % n_socks
        sock = socks[source]
        address = targets[target]
        i += 1
        categories[category] += 1
        if mutation == BYTE_FLIP:
            if data:
                datagram = bytearray(data)
                datagram[getrandbits(16) % len(datagram)] ^= 1 + getrandbits(8) % 255
                data = datagram
        elif mutation == NEW_HEADER_ID:
            data = randbytes(20) + data[20:]
        elif mutation in (NEW_IDS, OWN_ID):
            datagram = bytearray(data)
            new_id = randbytes(20)
            datagram[0:20] = new_id
            datagram[id_at : id_at + 20] = new_id
            if sender_at:
                if mutation == OWN_ID:
                    claimed = target_ids[target]
                elif getrandbits(1):
                    claimed = personas[source]
                else:
                    claimed = randbytes(20)
                datagram[sender_at : sender_at + 20] = claimed
            data = datagram
        elif mutation == GROUP:
            new_id = randbytes(20)
            for part in data:
                send(sock, new_id + part[20:], address)
            continue
        elif mutation == DUPLICATE:
            data = randbytes(20) + data[20:]
            send(sock, data, address)
        send(sock, data, address)

    # Valid PINGs, one source per target, as fast as the target reads them:
    # more than the burst, so the rate limiter must refuse some.
    ping = Event(b"\x11" * 20, personas[-1], EventType.PING)
    [template] = fragment(ping.id, encode(ping))
    at_id = HEADER_SIZE + encode(ping).find(ping.id)
    hot = socks[-1]
    for address in targets:
        for _ in range(spec["hot_pings"]):
            datagram = bytearray(template)
            new_id = randbytes(20)
            datagram[0:20] = new_id
            datagram[at_id : at_id + 20] = new_id
            categories["hot-ping"] += 1
            send(hot, datagram, address)
    sender.drain()
    return {"pool": len(pool)}


# ---------------------------------------------------------------------------
# Forged-sender mode


def request_templates(rng: random.Random) -> list[tuple[bytes, int, int, int]]:
    """(datagram, id offset, sender offset, key offset or 0) per request type."""
    marker_id, marker_sender, marker_key = b"\x11" * 20, b"\x22" * 20, b"\x33" * 20
    events = [
        Event(marker_id, marker_sender, EventType.PING),
        Event(marker_id, marker_sender, EventType.FIND_NODE, payload=FindNode(key=marker_key)),
        Event(
            marker_id,
            marker_sender,
            EventType.STORE,
            payload=Store((Value(marker_key, rng.randbytes(32), TTL_NS, 0),)),
        ),
    ]
    out = []
    for event in events:
        body = encode(event)
        [datagram] = fragment(event.id, body)
        key_at = body.find(marker_key)
        out.append(
            (
                datagram,
                HEADER_SIZE + body.find(marker_id),
                HEADER_SIZE + body.find(marker_sender),
                HEADER_SIZE + key_at if key_at >= 0 else 0,
            )
        )
    return out


def run_forged(spec: dict[str, Any], sender: Sender) -> dict[str, Any]:
    rng = random.Random(spec["seed"])
    templates = request_templates(rng)
    forged_ids = [rng.randbytes(20) for _ in range(spec["sender_ids"])]
    real_ids = [bytes.fromhex(h) for h in spec["impersonate"]]
    count, impersonations = spec["count"], spec["impersonations"]
    every = max(1, (count + impersonations) // max(1, impersonations))
    [address] = sender.targets
    socks = sender.socks
    randbytes = rng.randbytes
    names = ("ping", "find-node", "store")
    forged = real = 0
    i = 0
    while forged < count or real < impersonations:
        kind = i % 3
        datagram_template, id_at, sender_at, key_at = templates[kind]
        datagram = bytearray(datagram_template)
        new_id = randbytes(20)
        datagram[0:20] = new_id
        datagram[id_at : id_at + 20] = new_id
        if (i % every == every - 1 and real < impersonations) or forged >= count:
            sender_id = real_ids[real % len(real_ids)]
            sock = socks[rng.randrange(len(socks))]
            real += 1
            category = "impersonating-" + names[kind]
        else:
            sender_id = forged_ids[forged % len(forged_ids)]
            sock = socks[forged % len(socks)]
            forged += 1
            category = "forged-" + names[kind]
        datagram[sender_at : sender_at + 20] = sender_id
        if key_at:
            datagram[key_at : key_at + 20] = randbytes(20)
        sender.categories[category] += 1
        sender.send(sock, datagram, address)
        i += 1
    sender.drain()
    return {"forged": forged, "impersonations": real}


# ---------------------------------------------------------------------------
# Fragment mode


def run_fragments(spec: dict[str, Any], sender: Sender) -> dict[str, Any]:
    rng = random.Random(spec["seed"])
    chunks = [rng.randbytes(MAX_CHUNK) for _ in range(16)]
    [address] = sender.targets
    socks = sender.socks
    n_socks = len(socks)
    randbytes, randrange = rng.randbytes, rng.randrange
    held_claimed = 0
    for i in range(spec["count"]):
        total = 2 + i % 45  # 2..46 parts
        size = randrange((total - 1) * MAX_CHUNK + 1, min(total * MAX_CHUNK, 0xFFFF) + 1)
        held_claimed += size
        datagram = HEADER.pack(randbytes(20), 1, total, size) + chunks[i & 15]
        sender.categories[f"first-of-{total}"] += 1
        sender.send(socks[i % n_socks], datagram, address)
    sender.drain()
    return {"claimed_event_bytes": held_claimed}


# ---------------------------------------------------------------------------
# Caps mode


def stop_requested() -> bool:
    """Whether the test closed our standard input, its way to say stop."""
    return bool(select.select([sys.stdin], [], [], 0)[0])


def run_caps(spec: dict[str, Any], sender: Sender) -> dict[str, Any]:
    """Cycles of two kinds of bursts at one target, every chunk a full 1448
    bytes and no event ever completed, until ``stop_requested`` (or
    ``max_seconds``):

    * from each of the first ``record_sources`` sockets in turn,
      ``records_per_burst`` first fragments of distinct events: past the
      per-source record cap, and all together past the overall one;
    * from each other socket in turn, ``events_per_source`` events of 46
      parts, parts 1 to 45 each: past the per-source byte cap, and all
      together past the overall one.
    """
    rng = random.Random(spec["seed"])
    chunk = rng.randbytes(MAX_CHUNK)
    [address] = sender.targets
    split = spec["record_sources"]
    record_socks, byte_socks = sender.socks[:split], sender.socks[split:]
    size = MAX_EVENT_SIZE
    total = -(-size // MAX_CHUNK)  # 46 parts
    deadline = time.monotonic() + spec["max_seconds"]
    cycles = 0
    while not stop_requested() and time.monotonic() < deadline:
        for sock in record_socks:
            for _ in range(spec["records_per_burst"]):
                sender.categories["record-burst"] += 1
                sender.send(sock, HEADER.pack(rng.randbytes(20), 1, total, size) + chunk, address)
        for sock in byte_socks:
            for _ in range(spec["events_per_source"]):
                event_id = rng.randbytes(20)
                for part in range(1, total):
                    sender.categories["byte-burst"] += 1
                    sender.send(sock, HEADER.pack(event_id, part, total, size) + chunk, address)
        cycles += 1
    sender.drain()
    return {"cycles": cycles, "stopped": stop_requested()}


MODES = {"fuzz": run_fuzz, "forged": run_forged, "fragments": run_fragments, "caps": run_caps}


def main() -> None:
    spec = json.loads(sys.argv[1])
    sender = Sender(spec)
    started = time.monotonic()
    try:
        extra = MODES[spec["mode"]](spec, sender)
        report = sender.report(started, **extra)
    except Exception as error:  # reported to the test, which fails on it
        report = sender.report(started, error=f"{type(error).__name__}: {error}")
    finally:
        sender.close()
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
