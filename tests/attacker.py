"""Lying peers for the attack tests, run as a separate process.

Where ``flood_sender.py`` throws malformed and forged datagrams at a node,
this program plays *well-formed* peers that lie: they join the network,
answer pings from the address a node asked, and then answer lookups with
made-up nodes, acknowledge stores they drop, flood stores, or keep showing
up under new ids. It runs outside the test process so that it does not
compete for the GIL with the nodes under test.

Interface: ``python attacker.py`` reads one JSON spec line from stdin, binds
its sockets and prints ``{"ready": {...}}`` (the addresses and node ids it
uses). It then runs until the first of: ``duration_s`` has passed (when
given), the mode has finished its work (store-flood, waves), or a line
``stop`` arrives on stdin. Closing stdin also stops it, unless the run has
another end (``duration_s``, or a mode that finishes), so
``subprocess.run(input=spec)`` works for those. After the sending ends it
keeps reading and answering for ``linger_s`` seconds (default 0.5; not after
``stop``), then prints ``{"report": {...}}`` and exits 0. On any error it
prints ``{"error": "..."}`` and exits 1. Every line is one JSON object.

Modes (``spec["mode"]``), their spec keys in the docstring of each class:

* ``eclipse`` (``Eclipse``): members join through ``bootstrap`` and answer
  every lookup for a key T with the same K fake ids next to T, each held by
  a socket of the attackers' pools, which answers for it in turn.
* ``store-flood`` (``StoreFlood``): STOREs of junk (or of chosen keys) from
  many sources, acknowledged or not.
* ``waves`` (``Waves``): a pool of sockets takes fresh node ids every wave
  and meets the target, which hands each new id its keys (key transfer).
* ``find-flood`` (``FindFlood``): FIND_VALUE requests at a fixed rate.
* ``reflection`` (``Reflection``): requests from sources that never answer,
  counting what comes back (amplification).

Every datagram is built with the public ``dht.wire`` API and every received
one goes through ``Reassembler`` and ``decode``; what does not decode is
counted (``undecodable``), never fatal. Every address used, to bind or to
send to, must be in 127.0.0.0/8; anything else is refused before sending.
All randomness comes from ``random.Random(spec["seed"])``.

Common optional spec keys: ``duration_s``, ``linger_s``; for the modes that
flood a target (store-flood, find-flood, reflection, waves): ``rcvbuf``
(the target socket's SO_RCVBUF as getsockopt reports it; default: what a
node with the default ``socket_buffer_size`` gets),
``target_inodes`` (otherwise found in /proc/net/udp by address) and
``stall_timeout``. Sends to a target are paced with ``flood_sender.Pacer``:
its receive queue stays under a quarter of that buffer.

Every report has ``elapsed`` and ``sending_s`` (seconds), ``ended_by``
("duration", "done", "stop" or "eof") and the traffic counters
``datagrams_sent``, ``bytes_sent``, ``datagrams_received``,
``bytes_received``, ``undecodable``, ``send_errors``, ``recv_errors``,
``pauses`` and ``max_queued`` (pacing), besides the mode's own keys.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import random
import selectors
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from flood_sender import Pacer

from dht.errors import ProtocolError
from dht.wire import (
    HEADER_SIZE,
    MAX_CHUNK,
    MAX_DATAGRAM,
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
from dht.wire.framing import Reassembler

Address = tuple[str, int]

K = 20
"""Fake ids per key: as many as a lookup wants (the replication factor)."""
ID_BITS = 160
NS = 1_000_000_000
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
DEFAULT_LINGER = 0.5
MAX_POLL = 0.05
"""Longest wait in one poll: stdin and the clock are looked at this often."""
RECV_BUDGET = 256
"""Datagrams read from one socket per poll, so one busy socket cannot
starve the others (or the stop line)."""
SEND_DEADLINE = 30.0
"""Seconds a send may wait for room in our own full send buffer."""
OWN_BUFFER = 8 * 1024 * 1024
"""SO_RCVBUF asked for our sockets (the kernel caps it): what a node sends
us must not be lost in our own queue while we are busy sending."""
IDLE = math.inf


class SpecError(Exception):
    """The spec asks for something this program cannot or must not do."""


# ---------------------------------------------------------------------------
# Addresses


def require_loopback(host: str) -> str:
    """``host`` if it is an IPv4 address in 127.0.0.0/8; SpecError otherwise."""
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        raise SpecError(f"{host!r} is not an IPv4 address") from None
    if ip not in LOOPBACK:
        raise SpecError(f"refusing to use {host}: only 127.0.0.0/8 is allowed")
    return host


def parse_address(text: str) -> Address:
    """``"ip:port"`` to an address, loopback only."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise SpecError(f"{text!r} is not 'ip:port'")
    return require_loopback(host), int(port)


def show(address: Address) -> str:
    return f"{address[0]}:{address[1]}"


def udp_inodes(addresses: Iterable[Address]) -> list[int]:
    """Inodes of the UDP sockets bound to ``addresses`` (or to the wildcard
    address with their port), from /proc/net/udp: what the pacer watches."""
    wanted = set()
    for host, port in addresses:
        ip = struct.unpack("<I", socket.inet_aton(host))[0]  # the kernel prints it native-endian
        wanted.add(f"{ip:08X}:{port:04X}")
        wanted.add(f"00000000:{port:04X}")
    found = []
    with open("/proc/net/udp") as table:
        for line in table.read().splitlines()[1:]:
            fields = line.split()
            if fields[1] in wanted:
                found.append(int(fields[9]))
    return found


def default_rcvbuf() -> int:
    """What getsockopt reports for a node's receive buffer: it asks for
    32 MiB (the default ``socket_buffer_size``), the kernel grants at most
    ``rmem_max`` and reports twice what it grants."""
    try:
        with open("/proc/sys/net/core/rmem_max") as limit:
            return 2 * min(int(limit.read()), 32 * 1024 * 1024)
    except OSError:
        return 2 * 212992  # the usual rmem_default


# ---------------------------------------------------------------------------
# Sockets, stdin and the event loop


class Identity:
    """One socket and the node id it presents."""

    def __init__(self, host: str, node_id: bytes, role: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, OWN_BUFFER)
        except OSError:
            pass
        self.sock.bind((require_loopback(host), 0))
        self.sock.setblocking(False)
        self.address: Address = self.sock.getsockname()
        self.node_id = node_id
        self.role = role
        # Every sender here is a node under test, which may send one socket
        # many large events at once (a key transfer): caps far above a node's.
        self.reassembler = Reassembler(
            max_records=4096,
            max_bytes=256 * 1024 * 1024,
            max_records_per_source=4096,
            max_bytes_per_source=256 * 1024 * 1024,
        )

    def describe(self) -> dict[str, str]:
        return {"address": show(self.address), "id": self.node_id.hex()}


class StdinLines:
    """Lines from fd 0 without Python's buffering, so a ``stop`` that came
    with the spec line is not swallowed by a buffered reader."""

    def __init__(self) -> None:
        self.buffer = b""
        self.closed = False

    def read_line(self) -> str | None:
        """Block until a whole line (None at end of input)."""
        while b"\n" not in self.buffer:
            chunk = os.read(0, 65536)
            if not chunk:
                self.closed = True
                line, self.buffer = self.buffer, b""
                return line.decode() if line.strip() else None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    def pending_lines(self) -> list[str]:
        """Read what is available now; return the complete lines."""
        chunk = os.read(0, 65536)
        if not chunk:
            self.closed = True
            chunk = b"\n"
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return [line.decode(errors="replace").strip() for line in lines]


Handler = Callable[[Identity, Event, Address, int], None]


class Network:
    """Every socket in one selector, with stdin; sends, replies, counters."""

    def __init__(self, stdin: StdinLines) -> None:
        self.selector = selectors.DefaultSelector()
        self.identities: list[Identity] = []
        self.stdin = stdin
        self.stop_requested = False
        self.eof = stdin.closed
        if not stdin.closed:
            try:
                self.selector.register(0, selectors.EVENT_READ, None)
            except (OSError, ValueError):  # a file or /dev/null: no stop line can come
                self.eof = True
        self.on_datagram: Callable[[Identity, bytes, Address], None] = _ignore_datagram
        self.on_event: Handler = _ignore_event
        self.pacer: Pacer | None = None
        self.paced: set[Address] = set()
        self.allowed: set[str] = set()  # hosts already checked to be loopback
        self.counts: Counter[str] = Counter()

    def add(self, host: str, node_id: bytes, role: str) -> Identity:
        identity = Identity(host, node_id, role)
        self.identities.append(identity)
        self.selector.register(identity.sock, selectors.EVENT_READ, identity)
        return identity

    def pace(self, targets: list[Address], spec: dict[str, Any]) -> None:
        """Pace every send to ``targets`` on their sockets' receive queues."""
        inodes = spec.get("target_inodes") or udp_inodes(targets)
        if not inodes:
            raise SpecError(f"no UDP socket found at {', '.join(map(show, targets))}")
        rcvbuf = int(spec.get("rcvbuf") or default_rcvbuf())
        self.pacer = Pacer(list(inodes), rcvbuf, float(spec.get("stall_timeout", 60.0)))
        self.paced = set(targets)

    def close(self) -> None:
        for identity in self.identities:
            identity.sock.close()
        self.selector.close()

    # -- sending -------------------------------------------------------------

    def send_event(self, identity: Identity, event: Event, address: Address) -> int:
        """Send ``event`` (fragmented as needed); returns the datagram bytes."""
        return self.send(identity, fragment(event.id, encode(event)), address)

    def reply(
        self,
        identity: Identity,
        request: Event,
        event_type: EventType,
        sender: bytes,
        source: Address,
        payload: FindNode | FindValue | None = None,
    ) -> int:
        """Answer ``request`` from the socket it came to, under ``sender``."""
        response = Event(request.id, sender, event_type, True, payload)
        # Never paced: a reply is small, and pacing drains, which would run
        # the handlers again from inside one.
        return self.send(identity, fragment(response.id, encode(response)), source, paced=False)

    def send(
        self, identity: Identity, datagrams: list[bytes], address: Address, paced: bool = True
    ) -> int:
        if address[0] not in self.allowed:
            self.allowed.add(require_loopback(address[0]))
        pacer = self.pacer if paced and address in self.paced else None
        sent = 0
        for datagram in datagrams:
            if self._sendto(identity.sock, datagram, address):
                sent += len(datagram)
                self.counts["datagrams_sent"] += 1
            if pacer is not None:
                pacer.wait(self.drain)
        self.counts["bytes_sent"] += sent
        return sent

    def _sendto(self, sock: socket.socket, datagram: bytes, address: Address) -> bool:
        deadline = time.monotonic() + SEND_DEADLINE
        while True:
            try:
                sock.sendto(datagram, address)
                return True
            except BlockingIOError:
                # Our own send buffer is full: wait for room, not for ever.
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no room to send for {SEND_DEADLINE} s") from None
                self.counts["send_retries"] += 1
                time.sleep(0.0005)
            except OSError:
                self.counts["send_errors"] += 1
                return False

    # -- receiving -----------------------------------------------------------

    def drain(self) -> None:
        """Handle what has arrived, without waiting (the pacer calls this
        while it waits, so that pings keep being answered)."""
        self.poll(0.0)

    def poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for datagrams or stdin; handle them."""
        for key, _ in self.selector.select(max(0.0, timeout)):
            if key.data is None:
                self._read_stdin()
            else:
                self._read(key.data)

    def _read_stdin(self) -> None:
        for line in self.stdin.pending_lines():
            if line == "stop":
                self.stop_requested = True
        if self.stdin.closed:
            self.eof = True
            self.selector.unregister(0)

    def _read(self, identity: Identity) -> None:
        for _ in range(RECV_BUDGET):
            try:
                data, source = identity.sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error reported on the socket
                self.counts["recv_errors"] += 1
                continue
            self.counts["datagrams_received"] += 1
            self.counts["bytes_received"] += len(data)
            self.on_datagram(identity, data, source)
            self._deliver(identity, data, source)

    def _deliver(self, identity: Identity, data: bytes, source: Address) -> None:
        """Reassemble and decode; hand complete events to the mode."""
        try:
            body = identity.reassembler.feed(data, source, time.monotonic())
        except ProtocolError:
            self.counts["undecodable"] += 1
            return
        if body is None:
            return
        try:
            event = decode(body)
        except Exception:  # a node must never crash us: count it, go on
            self.counts["undecodable"] += 1
            return
        size = len(body)
        self.on_event(identity, event, source, size + HEADER_SIZE * -(-size // MAX_CHUNK))


def _ignore_datagram(identity: Identity, data: bytes, source: Address) -> None:
    pass


def _ignore_event(identity: Identity, event: Event, source: Address, wire: int) -> None:
    pass


class Ticker:
    """Evenly spaced sending slots at ``rate`` per second. Slots missed while
    the loop was busy are skipped beyond ``burst``, never made up at once."""

    def __init__(self, rate: float, burst: int = 1) -> None:
        if rate <= 0:
            raise SpecError(f"rate must be positive, got {rate}")
        self.interval = 1.0 / rate
        self.next: float | None = None  # the first slot is the first call's time
        self.burst = burst
        self.skipped = 0

    def take(self, now: float) -> int:
        """How many slots are due now (at most ``burst``)."""
        if self.next is None:
            self.next = now
        if now < self.next:
            return 0
        due = int((now - self.next) / self.interval) + 1
        if due > self.burst:
            self.skipped += due - self.burst
            self.next = now + self.interval
            return self.burst
        self.next += due * self.interval
        return due


# ---------------------------------------------------------------------------
# Modes


class Mode:
    """One attack: binds its sockets in ``__init__``, sends in ``tick``,
    answers in ``on_event``."""

    ends_by_itself: ClassVar[bool] = False
    """Whether ``tick`` eventually returns None (the sending is done)."""

    def __init__(self, spec: dict[str, Any], net: Network) -> None:
        self.spec = spec
        self.net = net
        self.rng = random.Random(spec["seed"])
        net.on_event = self.on_event
        net.on_datagram = self.on_datagram

    def new_id(self) -> bytes:
        return self.rng.randbytes(20)

    def ready(self) -> dict[str, Any]:
        raise NotImplementedError

    def tick(self, now: float) -> float | None:
        """Send what is due; return when to be called next (None: done)."""
        return IDLE

    def settled(self) -> bool:
        """Whether nothing more is awaited (ends the linger early)."""
        return False

    def on_datagram(self, identity: Identity, data: bytes, source: Address) -> None:
        pass

    def on_event(self, identity: Identity, event: Event, source: Address, wire: int) -> None:
        pass

    def report(self) -> dict[str, Any]:
        raise NotImplementedError

    def request(
        self, identity: Identity, event_type: EventType, payload: Any, address: Address
    ) -> Event:
        """Send a new request from ``identity``; returns it."""
        event = Event(self.new_id(), identity.node_id, event_type, False, payload)
        self.net.send_event(identity, event, address)
        return event

    def pong(self, identity: Identity, event: Event, source: Address) -> None:
        self.net.reply(identity, event, EventType.PONG, identity.node_id, source)


def hosts_of(spec: dict[str, Any], name: str = "hosts") -> list[str]:
    hosts = spec[name]
    if not isinstance(hosts, list) or not hosts:
        raise SpecError(f"{name} must be a non-empty list of IPs")
    return [require_loopback(host) for host in hosts]


def type_counts(counter: Counter[EventType]) -> dict[str, int]:
    return {kind.name: counter[kind] for kind in EventType if counter[kind]}


class Eclipse(Mode):
    """Malicious nodes answering every lookup with the same fake ids.

    Spec: ``hosts`` (one attacker per IP), ``ports_per_host`` (pool sockets
    per host), ``bootstrap`` ("ip:port" list), ``fake`` ("close": the fakes
    share the key's first ``close_bits`` bits, default 64; "plausible": they
    share exactly ``plausible_bits``, default 8, then differ), ``answer_values``
    (FIND_VALUE gets one junk value instead of fakes), ``rejoin_s`` (2.0),
    ``value_ttl_s`` (3600, of the junk value), ``show_fakes`` (hex keys whose
    fakes the ready line lists), ``seed``.

    Each host has a member socket, which joins by FIND_NODE of its own id to
    every bootstrap address every ``rejoin_s``, and ``ports_per_host`` pool
    sockets. For a key T the K fakes are drawn from ``Random(f"{seed}:{T}")``,
    so every host names the same ones, and fake i lives on pool socket
    ``i // H % ports_per_host`` of host ``i % H``: a pool socket holds at most
    one fake per key, and answers for T under that fake's id (else under its
    default id). A PING gets a PONG under the id that socket last presented
    to the requester; a STORE is acknowledged and dropped.

    Ready: ``members`` and ``pool`` (lists of {"address", "id", "host"}; a
    pool socket's id is its default id), ``fake_slots`` (address of fake i),
    ``fakes`` ({hex key: [{"address", "id"}]} for ``show_fakes``).

    Report: ``requests``, ``member_requests``, ``pool_requests`` (counts by
    type name), ``stores_acked``, ``answers_sent`` (every response),
    ``fake_answers`` (lookups answered with fakes), ``value_answers``,
    ``requesters`` (distinct source addresses), ``requester_hosts``,
    ``pool_sockets_asked`` (pool sockets asked a lookup), ``keys_asked``,
    ``joins_sent``, ``responses`` (what came back to the joins, by type name).

    A pool socket holds fake i of every key, so a node that met it under
    several ids (lookups of several keys) has several contacts at one
    address; its PING gets the last id shown, which fails a ping meant for
    an earlier one (there is no telling which id a PING is for).
    """

    def __init__(self, spec: dict[str, Any], net: Network) -> None:
        super().__init__(spec, net)
        hosts = hosts_of(spec)
        self.ports = int(spec["ports_per_host"])
        if self.ports < 1 or len(hosts) * self.ports < K:
            raise SpecError(f"hosts * ports_per_host must be at least {K} (one socket per fake)")
        self.bootstrap = [parse_address(a) for a in spec["bootstrap"]]
        self.kind = spec.get("fake", "close")
        if self.kind not in ("close", "plausible"):
            raise SpecError(f"fake must be 'close' or 'plausible', not {self.kind!r}")
        key = "close_bits" if self.kind == "close" else "plausible_bits"
        self.shared = int(spec.get(key, 64 if self.kind == "close" else 8))
        if not 0 <= self.shared <= ID_BITS - 10:  # room for K distinct fakes
            raise SpecError(f"{key} must be in 0..{ID_BITS - 10}")
        self.answer_values = bool(spec.get("answer_values", False))
        self.rejoin = float(spec.get("rejoin_s", 2.0))
        self.value_ttl_ns = int(float(spec.get("value_ttl_s", 3600)) * NS)
        self.seed = spec["seed"]
        self.members = [net.add(host, self.new_id(), "member") for host in hosts]
        self.pools = [
            [net.add(host, self.new_id(), "pool") for _ in range(self.ports)] for host in hosts
        ]
        # The socket of fake i, and the fake index each socket holds.
        self.slots = [self.pools[i % len(hosts)][i // len(hosts) % self.ports] for i in range(K)]
        self.slot_of = {identity: i for i, identity in enumerate(self.slots)}
        self.presented: dict[tuple[Identity, Address], bytes] = {}  # (socket, requester) -> id
        self.fakes: dict[bytes, list[bytes]] = {}
        self.next_join = 0.0
        self.requests: dict[str, Counter[EventType]] = {"member": Counter(), "pool": Counter()}
        self.counts: Counter[str] = Counter()
        self.responses: Counter[EventType] = Counter()
        self.requesters: set[Address] = set()
        self.pool_asked: set[Identity] = set()
        self.keys_asked: set[bytes] = set()

    def fake_ids(self, key: bytes) -> list[bytes]:
        """The K fake ids for ``key``: the same in every run with this seed."""
        fakes = self.fakes.get(key)
        if fakes is not None:
            return fakes
        rng = random.Random(f"{self.seed}:{key.hex()}")
        target = int.from_bytes(key, "big")
        free = ID_BITS - self.shared  # bits below the shared prefix
        prefix = target >> free << free
        ids: list[int] = []
        while len(ids) < K:
            if self.kind == "close":
                fake = prefix | rng.getrandbits(free)
            else:  # the first bit after the prefix differs from the key's
                flip = 1 << (free - 1)
                fake = prefix | (~target & flip) | rng.getrandbits(free - 1)
            if fake != target and fake not in ids:
                ids.append(fake)
        if len(self.fakes) > 4096:  # bounded: a long run sees many keys
            self.fakes.clear()
        fakes = self.fakes[key] = [fake.to_bytes(20, "big") for fake in ids]
        return fakes

    def fake_nodes(self, key: bytes) -> tuple[Node, ...]:
        return tuple(
            Node(fake, slot.address)
            for fake, slot in zip(self.fake_ids(key), self.slots, strict=True)
        )

    def ready(self) -> dict[str, Any]:
        def entry(identity: Identity) -> dict[str, Any]:
            return {**identity.describe(), "host": identity.address[0]}

        shown = [bytes.fromhex(key) for key in self.spec.get("show_fakes", [])]
        return {
            "members": [entry(member) for member in self.members],
            "pool": [entry(identity) for pool in self.pools for identity in pool],
            "fake_slots": [show(slot.address) for slot in self.slots],
            "fakes": {
                key.hex(): [
                    {"address": show(node.address), "id": node.id.hex()}
                    for node in self.fake_nodes(key)
                ]
                for key in shown
            },
        }

    def tick(self, now: float) -> float | None:
        if now >= self.next_join:
            # Join again and again, so that honest nodes keep meeting us.
            for member in self.members:
                for address in self.bootstrap:
                    self.request(member, EventType.FIND_NODE, FindNode(key=member.node_id), address)
                    self.counts["joins_sent"] += 1
            self.next_join = now + self.rejoin
        return self.next_join

    def sender_for(self, identity: Identity, key: bytes | None, source: Address) -> bytes:
        """The id to answer under: a member's own; on a pool socket, the fake
        it holds for ``key`` (else its default id), remembered per requester."""
        if identity.role == "member":
            return identity.node_id
        slot = self.slot_of.get(identity)
        sender = identity.node_id
        if key is not None and slot is not None:
            sender = self.fake_ids(key)[slot]
        self.presented[(identity, source)] = sender
        return sender

    def on_event(self, identity: Identity, event: Event, source: Address, wire: int) -> None:
        if event.response:
            self.responses[event.type] += 1
            return
        self.requests[identity.role][event.type] += 1
        self.requesters.add(source)
        payload = event.payload
        net = self.net
        if event.type is EventType.PING:
            sender = identity.node_id
            if identity.role == "pool":
                sender = self.presented.get((identity, source), sender)
            net.reply(identity, event, EventType.PONG, sender, source)
        elif event.type is EventType.STORE:
            assert isinstance(payload, Store)
            key = payload.values[0].key if payload.values else None
            sender = self.sender_for(identity, key, source)
            net.reply(identity, event, EventType.STORE, sender, source)  # and keep nothing
            self.counts["stores_acked"] += 1
        elif isinstance(payload, FindNode | FindValue) and payload.key is not None:
            self.answer_lookup(identity, event, payload.key, source)
        else:
            return  # a PONG request: the reference ignores it too
        self.counts["answers_sent"] += 1

    def answer_lookup(self, identity: Identity, event: Event, key: bytes, source: Address) -> None:
        self.keys_asked.add(key)
        if identity.role == "pool":
            self.pool_asked.add(identity)
        sender = self.sender_for(identity, key, source)
        answer: FindNode | FindValue
        if event.type is EventType.FIND_NODE:
            answer = FindNode(nodes=self.fake_nodes(key))
        elif self.answer_values:
            junk = Value(key, b"attacker:" + key.hex().encode(), self.value_ttl_ns, time.time_ns())
            answer = FindValue(values=(junk,), found=1)
            self.counts["value_answers"] += 1
        else:
            answer = FindValue(nodes=self.fake_nodes(key))
        if not isinstance(answer, FindValue) or not answer.values:
            self.counts["fake_answers"] += 1
        self.net.reply(identity, event, event.type, sender, source, answer)

    def report(self) -> dict[str, Any]:
        member, pool = self.requests["member"], self.requests["pool"]
        return {
            "requests": type_counts(member + pool),
            "member_requests": type_counts(member),
            "pool_requests": type_counts(pool),
            "stores_acked": self.counts["stores_acked"],
            "answers_sent": self.counts["answers_sent"],
            "fake_answers": self.counts["fake_answers"],
            "value_answers": self.counts["value_answers"],
            "requesters": len(self.requesters),
            "requester_hosts": len({host for host, _ in self.requesters}),
            "pool_sockets_asked": len(self.pool_asked),
            "keys_asked": len(self.keys_asked),
            "joins_sent": self.counts["joins_sent"],
            "responses": type_counts(self.responses),
        }


class StoreFlood(Mode):
    """Junk STOREs from many sources (or squatting on chosen keys).

    Spec: ``hosts`` (one source socket and random node id each),
    ``targets`` ("ip:port"), ``stores`` (requests in all),
    ``values_per_store`` (1), ``value_size`` ([min, max] bytes, max <= 32768),
    ``keys`` (hex keys, each target's values cycle through them; absent: a
    random key per value),
    ``ttl_s`` (30 days), ``answer_pings`` (true), ``rate`` (optional cap in
    STORE requests per second overall), ``seed``.

    Store n goes to target ``n % T`` from source ``n // T % S``, so every
    source meets every target. The mode is done when every store is sent;
    the linger ends early once every store is acknowledged.

    Ready: ``sources`` ([{"address", "id"}]), ``targets`` (["ip:port"]).

    Report: ``stores_sent``, ``values_sent``, ``store_bytes`` (datagram
    bytes of the STOREs), ``store_datagrams``, ``acked`` (STORE responses
    echoing one of our requests' ids), ``duplicate_acks``,
    ``unmatched_store_responses`` (STORE responses under any other id),
    ``other_responses`` (other responses, by type name), ``pings_answered``,
    ``requests_received`` (by type name), ``skipped_slots`` (rate).
    """

    ends_by_itself = True
    BATCH: ClassVar[int] = 32
    """Stores per tick without a rate: the loop still reads between batches."""

    def __init__(self, spec: dict[str, Any], net: Network) -> None:
        super().__init__(spec, net)
        self.sources = [net.add(host, self.new_id(), "source") for host in hosts_of(spec)]
        self.targets = [parse_address(a) for a in spec["targets"]]
        if not self.targets:
            raise SpecError("targets is empty")
        self.total = int(spec["stores"])
        self.per_store = int(spec.get("values_per_store", 1))
        low, high = (int(n) for n in spec["value_size"])
        if not 0 <= low <= high <= 32768:
            raise SpecError("value_size must be [min, max] with 0 <= min <= max <= 32768")
        self.sizes = (low, high)
        self.keys = [bytes.fromhex(k) for k in spec.get("keys") or []]
        if any(len(k) != 20 for k in self.keys):
            raise SpecError("keys must be 20-byte hex strings")
        self.ttl_ns = int(float(spec.get("ttl_s", 30 * 24 * 3600)) * NS)
        self.answer_pings = bool(spec.get("answer_pings", True))
        self.check_size()
        net.pace(self.targets, spec)
        self.ticker = Ticker(float(spec["rate"]), burst=8) if spec.get("rate") else None
        self.sent = 0
        self.pending: set[bytes] = set()
        self.acked_ids: set[bytes] = set()
        self.counts: Counter[str] = Counter()
        self.key_turns: Counter[Address] = Counter()
        self.other: Counter[EventType] = Counter()
        self.requests: Counter[EventType] = Counter()

    def check_size(self) -> None:
        """Refuse a spec whose largest STORE would not fit in one event."""
        largest = Value(bytes(20), bytes(self.sizes[1]), self.ttl_ns, time.time_ns())
        event = Event(
            bytes(20), bytes(20), EventType.STORE, False, Store((largest,) * self.per_store)
        )
        if len(encode(event)) > MAX_EVENT_SIZE:
            raise SpecError("values_per_store * value_size does not fit one event (65535 bytes)")

    def ready(self) -> dict[str, Any]:
        return {
            "sources": [source.describe() for source in self.sources],
            "targets": [show(target) for target in self.targets],
        }

    def tick(self, now: float) -> float | None:
        count = self.BATCH if self.ticker is None else self.ticker.take(now)
        for _ in range(count):
            if self.sent >= self.total:
                break
            self.send_store()
        if self.sent >= self.total:
            return None
        return now if self.ticker is None else self.ticker.next or now

    def send_store(self) -> None:
        n, rng = self.sent, self.rng
        target = self.targets[n % len(self.targets)]
        source = self.sources[n // len(self.targets) % len(self.sources)]
        values = []
        for _ in range(self.per_store):
            if self.keys:
                # Round-robin per target, so that every target gets every key.
                key = self.keys[self.key_turns[target] % len(self.keys)]
                self.key_turns[target] += 1
            else:
                key = self.new_id()
            size = rng.randint(*self.sizes)
            values.append(Value(key, rng.randbytes(size), self.ttl_ns, time.time_ns()))
            self.counts["values_sent"] += 1
        event = Event(self.new_id(), source.node_id, EventType.STORE, False, Store(tuple(values)))
        self.pending.add(event.id)
        datagrams = fragment(event.id, encode(event))
        self.counts["store_datagrams"] += len(datagrams)
        self.counts["store_bytes"] += self.net.send(source, datagrams, target)
        self.sent += 1

    def settled(self) -> bool:
        return not self.pending

    def on_event(self, identity: Identity, event: Event, source: Address, wire: int) -> None:
        if not event.response:
            self.requests[event.type] += 1
            if event.type is EventType.PING and self.answer_pings:
                self.pong(identity, event, source)
                self.counts["pings_answered"] += 1
        elif event.type is not EventType.STORE:
            self.other[event.type] += 1
        elif event.id in self.pending:
            self.pending.discard(event.id)
            self.acked_ids.add(event.id)
        elif event.id in self.acked_ids:
            self.counts["duplicate_acks"] += 1
        else:
            # A refusal may come under another id: counted apart for the tests.
            self.counts["unmatched_store_responses"] += 1

    def report(self) -> dict[str, Any]:
        return {
            "stores_sent": self.sent,
            "values_sent": self.counts["values_sent"],
            "store_bytes": self.counts["store_bytes"],
            "store_datagrams": self.counts["store_datagrams"],
            "acked": len(self.acked_ids),
            "duplicate_acks": self.counts["duplicate_acks"],
            "unmatched_store_responses": self.counts["unmatched_store_responses"],
            "other_responses": type_counts(self.other),
            "pings_answered": self.counts["pings_answered"],
            "requests_received": type_counts(self.requests),
            "skipped_slots": self.ticker.skipped if self.ticker else 0,
        }


WAVE_KEYS = (
    "store_requests",
    "store_datagrams",
    "store_bytes",
    "values",
    "ids_receiving_stores",
    "pings_received",
    "find_node_answers",
    "requests_received",
    "datagrams_received",
    "bytes_received",
)


class Waves(Mode):
    """Fresh node ids meeting the target, wave after wave (key transfer).

    Spec: ``hosts``, ``ports_per_host``, ``target`` ("ip:port"),
    ``ids_per_wave`` (<= hosts * ports_per_host), ``waves``,
    ``wave_interval_s``, ``ack_stores`` (false), ``answer_find_node``
    (false: answer lookups with an empty node list), ``seed``.

    Each wave gives ``ids_per_wave`` sockets of the pool (spread over the
    hosts) a fresh random id and sends one FIND_NODE of a random key from
    each to the target, which pings the new id to verify it (answered: a
    PONG under the current id) and then hands it the values it should hold.
    What arrives is counted for the wave running when it arrives. The mode
    is done ``wave_interval_s`` after the last wave started.

    Ready: ``sockets`` (["ip:port"], the pool in wave order), ``target``.

    Report: ``waves`` (one dict per wave) and ``totals``, each with
    ``store_requests``, ``store_datagrams``, ``store_bytes`` (wire bytes of
    the complete STORE requests), ``values`` (in them),
    ``ids_receiving_stores`` (distinct ids sent at least one STORE),
    ``pings_received``, ``find_node_answers`` (answers to our FIND_NODEs),
    ``requests_received`` (every request event), ``datagrams_received`` and
    ``bytes_received`` (everything, complete or not); a wave also has
    ``started`` (seconds from the first wave).
    """

    ends_by_itself = True

    def __init__(self, spec: dict[str, Any], net: Network) -> None:
        super().__init__(spec, net)
        hosts = hosts_of(spec)
        ports = int(spec["ports_per_host"])
        self.per_wave = int(spec["ids_per_wave"])
        if not 0 < self.per_wave <= len(hosts) * ports:
            raise SpecError("ids_per_wave must be in 1..hosts * ports_per_host")
        self.target = parse_address(spec["target"])
        self.total_waves = int(spec["waves"])
        self.interval = float(spec["wave_interval_s"])
        self.ack_stores = bool(spec.get("ack_stores", False))
        self.answer_find_node = bool(spec.get("answer_find_node", False))
        # Wave order spreads the ids over the hosts (a node verifies only so
        # many ids of one address at once).
        self.pool = [
            net.add(hosts[i % len(hosts)], bytes(20), "wave") for i in range(self.per_wave)
        ]
        net.pace([self.target], spec)
        self.next_wave = 0.0
        self.first_wave = 0.0
        self.waves: list[dict[str, Any]] = []
        self.storing: list[set[bytes]] = []

    def ready(self) -> dict[str, Any]:
        return {
            "sockets": [show(identity.address) for identity in self.pool],
            "target": show(self.target),
        }

    def tick(self, now: float) -> float | None:
        if now < self.next_wave:
            return self.next_wave
        if len(self.waves) >= self.total_waves:
            return None  # the last wave has had its interval
        if not self.waves:
            self.first_wave = now
        self.waves.append(
            {"started": round(now - self.first_wave, 6), **dict.fromkeys(WAVE_KEYS, 0)}
        )
        self.storing.append(set())
        for identity in self.pool:
            identity.node_id = self.new_id()
            self.request(identity, EventType.FIND_NODE, FindNode(key=self.new_id()), self.target)
        self.next_wave = now + self.interval
        return self.next_wave

    def on_datagram(self, identity: Identity, data: bytes, source: Address) -> None:
        if self.waves:
            wave = self.waves[-1]
            wave["datagrams_received"] += 1
            wave["bytes_received"] += len(data)

    def on_event(self, identity: Identity, event: Event, source: Address, wire: int) -> None:
        if not self.waves:
            return
        wave = self.waves[-1]
        if event.response:
            if event.type is EventType.FIND_NODE:
                wave["find_node_answers"] += 1
            return
        wave["requests_received"] += 1
        payload = event.payload
        if event.type is EventType.PING:
            wave["pings_received"] += 1
            self.pong(identity, event, source)
        elif event.type is EventType.STORE:
            assert isinstance(payload, Store)
            wave["store_requests"] += 1
            wave["store_datagrams"] += -(-wire // MAX_DATAGRAM)  # the parts of the event
            wave["store_bytes"] += wire
            wave["values"] += len(payload.values)
            self.storing[-1].add(identity.node_id)
            wave["ids_receiving_stores"] = len(self.storing[-1])
            if self.ack_stores:
                self.net.reply(identity, event, EventType.STORE, identity.node_id, source)
        elif self.answer_find_node and event.type is EventType.FIND_NODE:
            self.net.reply(
                identity, event, event.type, identity.node_id, source, FindNode(nodes=())
            )
        elif self.answer_find_node and event.type is EventType.FIND_VALUE:
            self.net.reply(
                identity, event, event.type, identity.node_id, source, FindValue(nodes=())
            )

    def report(self) -> dict[str, Any]:
        totals = {key: sum(wave[key] for wave in self.waves) for key in WAVE_KEYS}
        totals["ids_receiving_stores"] = len(set().union(*self.storing))
        return {"waves": self.waves, "totals": totals}


class FindFlood(Mode):
    """FIND_VALUE requests at a fixed rate from one address.

    Spec: ``host``, ``target`` ("ip:port"), ``key`` (hex), ``rate``
    (requests per second, evenly spaced: a slot missed is skipped, never
    made up in a burst), ``duration_s`` (required), ``answer_pings`` (true),
    ``seed``.

    Ready: ``source`` ({"address", "id"}), ``target``.

    Report: ``requests_sent``, ``answers`` (complete response events echoing
    one of our requests), ``answered_requests`` (requests with at least one),
    ``answer_bytes`` (every datagram byte received), ``values_received``,
    ``node_answers`` (answers carrying nodes, not values),
    ``largest_answer_bytes`` (the most wire bytes of complete answer events
    sharing one request id), ``unmatched_responses``, ``pings_answered``,
    ``skipped_slots``, ``rate_achieved`` (requests per second of sending).
    """

    def __init__(self, spec: dict[str, Any], net: Network) -> None:
        super().__init__(spec, net)
        if spec.get("duration_s") is None:
            raise SpecError("find-flood needs duration_s")
        self.source = net.add(require_loopback(spec["host"]), self.new_id(), "source")
        self.target = parse_address(spec["target"])
        self.key = bytes.fromhex(spec["key"])
        if len(self.key) != 20:
            raise SpecError("key must be 20 bytes of hex")
        self.answer_pings = bool(spec.get("answer_pings", True))
        net.pace([self.target], spec)
        self.ticker = Ticker(float(spec["rate"]))
        self.answered: dict[bytes, int] = {}  # request id -> wire bytes of its answers
        self.counts: Counter[str] = Counter()

    def ready(self) -> dict[str, Any]:
        return {"source": self.source.describe(), "target": show(self.target)}

    def tick(self, now: float) -> float | None:
        if self.ticker.take(now):
            payload = FindValue(key=self.key)
            event = self.request(self.source, EventType.FIND_VALUE, payload, self.target)
            self.answered[event.id] = 0
        return self.ticker.next or now

    def on_event(self, identity: Identity, event: Event, source: Address, wire: int) -> None:
        if not event.response:
            if event.type is EventType.PING and self.answer_pings:
                self.pong(identity, event, source)
                self.counts["pings_answered"] += 1
            return
        if event.id not in self.answered or event.type is not EventType.FIND_VALUE:
            self.counts["unmatched_responses"] += 1
            return
        self.answered[event.id] += wire
        self.counts["answers"] += 1
        payload = event.payload
        if isinstance(payload, FindValue) and payload.values:
            self.counts["values_received"] += len(payload.values)
        else:
            self.counts["node_answers"] += 1

    def report(self) -> dict[str, Any]:
        return {
            "requests_sent": len(self.answered),
            "answers": self.counts["answers"],
            "answered_requests": sum(1 for n in self.answered.values() if n),
            "answer_bytes": self.net.counts["bytes_received"],
            "values_received": self.counts["values_received"],
            "node_answers": self.counts["node_answers"],
            "largest_answer_bytes": max(self.answered.values(), default=0),
            "unmatched_responses": self.counts["unmatched_responses"],
            "pings_answered": self.counts["pings_answered"],
            "skipped_slots": self.ticker.skipped,
        }


class Reflection(Mode):
    """Requests from addresses that never answer (stand-ins for forged
    victims): what a node sends back to an unproven address.

    Spec: ``hosts`` (one socket and random node id each), ``targets``
    ("ip:port"), ``kind`` ("find_value" with ``key`` (hex), or "find_node":
    ``key`` if given, else a random key per request), ``rate`` (requests per
    second per host), ``duration_s`` (required), ``seed``.

    Requests go round-robin over the hosts, each host's in turn over the
    targets. Nothing is ever answered, not even a verification PING.

    Ready: ``sources`` ([{"address", "id"}]), ``targets``.

    Report: ``requests_sent``, ``request_bytes`` (datagram length of one
    request), ``bytes_received``, ``datagrams_received``, ``per_host``
    ({ip: bytes received}), ``per_host_datagrams``, ``largest_per_request``
    (most datagram bytes received under one request's id),
    ``answered_requests``, ``pings_received`` (verification PINGs, unanswered),
    ``skipped_slots``.
    """

    def __init__(self, spec: dict[str, Any], net: Network) -> None:
        super().__init__(spec, net)
        if spec.get("duration_s") is None:
            raise SpecError("reflection needs duration_s")
        hosts = hosts_of(spec)
        self.sources = [net.add(host, self.new_id(), "source") for host in hosts]
        self.targets = [parse_address(a) for a in spec["targets"]]
        if not self.targets:
            raise SpecError("targets is empty")
        self.kind = spec["kind"]
        if self.kind not in ("find_value", "find_node"):
            raise SpecError(f"kind must be 'find_value' or 'find_node', not {self.kind!r}")
        key = spec.get("key")
        if self.kind == "find_value" and not key:
            raise SpecError("kind find_value needs key")
        self.key = bytes.fromhex(key) if key else None
        net.pace(self.targets, spec)
        self.ticker = Ticker(float(spec["rate"]) * len(hosts), burst=8)
        self.sent = 0
        self.request_bytes = 0
        self.by_request: dict[bytes, int] = {}  # request id -> datagram bytes received
        self.per_host: Counter[str] = Counter()
        self.per_host_datagrams: Counter[str] = Counter()
        self.pings = 0

    def ready(self) -> dict[str, Any]:
        return {
            "sources": [source.describe() for source in self.sources],
            "targets": [show(target) for target in self.targets],
        }

    def tick(self, now: float) -> float | None:
        for _ in range(self.ticker.take(now)):
            n = self.sent
            source = self.sources[n % len(self.sources)]
            target = self.targets[n // len(self.sources) % len(self.targets)]
            key = self.key or self.new_id()
            payload: FindNode | FindValue
            if self.kind == "find_value":
                event_type, payload = EventType.FIND_VALUE, FindValue(key=key)
            else:
                event_type, payload = EventType.FIND_NODE, FindNode(key=key)
            event = Event(self.new_id(), source.node_id, event_type, False, payload)
            self.by_request[event.id] = 0
            self.request_bytes = self.net.send_event(source, event, target)
            self.sent += 1
        return self.ticker.next or now

    def on_datagram(self, identity: Identity, data: bytes, source: Address) -> None:
        host = identity.address[0]
        self.per_host[host] += len(data)
        self.per_host_datagrams[host] += 1
        try:
            event_id = parse_header(data).event_id
        except ProtocolError:
            return  # counted as undecodable when reassembled
        if event_id in self.by_request:
            self.by_request[event_id] += len(data)

    def on_event(self, identity: Identity, event: Event, source: Address, wire: int) -> None:
        if not event.response and event.type is EventType.PING:
            self.pings += 1  # never answered: the address stays unproven

    def report(self) -> dict[str, Any]:
        return {
            "requests_sent": self.sent,
            "request_bytes": self.request_bytes,
            "bytes_received": self.net.counts["bytes_received"],
            "datagrams_received": self.net.counts["datagrams_received"],
            "per_host": dict(self.per_host),
            "per_host_datagrams": dict(self.per_host_datagrams),
            "largest_per_request": max(self.by_request.values(), default=0),
            "answered_requests": sum(1 for n in self.by_request.values() if n),
            "pings_received": self.pings,
            "skipped_slots": self.ticker.skipped,
        }


MODES: dict[str, type[Mode]] = {
    "eclipse": Eclipse,
    "store-flood": StoreFlood,
    "waves": Waves,
    "find-flood": FindFlood,
    "reflection": Reflection,
}


# ---------------------------------------------------------------------------
# Running


def emit(kind: str, body: Any) -> None:
    print(json.dumps({kind: body}), flush=True)


def run(spec: dict[str, Any], net: Network) -> dict[str, Any]:
    """Bind, announce, attack, linger; return the report."""
    name = spec.get("mode")
    if name not in MODES:
        raise SpecError(f"unknown mode {name!r}; one of {', '.join(MODES)}")
    mode = MODES[name](spec, net)
    emit("ready", {"mode": name, **mode.ready()})

    duration = spec.get("duration_s")
    started = time.monotonic()
    deadline = started + float(duration) if duration is not None else IDLE
    linger = float(spec.get("linger_s", DEFAULT_LINGER))
    eof_stops = duration is None and not mode.ends_by_itself
    sending, wake, linger_until, sending_ended = True, 0.0, IDLE, IDLE
    ended_by = ""
    while True:
        now = time.monotonic()
        if net.stop_requested or (net.eof and eof_stops):
            if sending:
                ended_by, sending_ended = ("stop" if net.stop_requested else "eof"), now
            break
        if sending:
            if now >= deadline:
                sending, ended_by = False, "duration"
            else:
                next_wake = mode.tick(now)
                if next_wake is None:
                    sending, ended_by = False, "done"
                else:
                    wake = next_wake
            if not sending:
                sending_ended, linger_until = now, now + linger
        if not sending and (now >= linger_until or mode.settled()):
            break
        until = min(wake if sending else linger_until, deadline)
        net.poll(min(until - time.monotonic(), MAX_POLL))
    finished = time.monotonic()
    pacer = net.pacer
    return {
        "mode": name,
        **mode.report(),
        "elapsed": round(finished - started, 6),
        "sending_s": round(min(sending_ended, finished) - started, 6),
        "ended_by": ended_by,
        **{
            key: net.counts[key]
            for key in (
                "datagrams_sent",
                "bytes_sent",
                "datagrams_received",
                "bytes_received",
                "undecodable",
                "send_errors",
                "recv_errors",
            )
        },
        "pauses": pacer.pauses if pacer else 0,
        "max_queued": pacer.max_queued if pacer else 0,
    }


def main() -> int:
    stdin = StdinLines()
    net: Network | None = None
    try:
        line = stdin.read_line()
        if line is None:
            raise SpecError("no spec line on stdin")
        spec = json.loads(line)
        if not isinstance(spec, dict) or "seed" not in spec:
            raise SpecError("the spec must be a JSON object with a seed")
        net = Network(stdin)
        report = run(spec, net)
    except Exception as error:  # reported to the test, which fails on it
        emit("error", f"{type(error).__name__}: {error}")
        return 1
    finally:
        if net is not None:
            net.close()
    emit("report", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
