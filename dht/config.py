"""``Config``: the Go library's settings in snake_case, validated on construction."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Collection
from dataclasses import dataclass, field

from .core.storage import Storage
from .errors import ConfigError
from .keys import KEY_BYTES
from .wire.events import Address


@dataclass
class Config:
    """Settings of a node. Every field is checked when the object is built
    (``ConfigError`` names the field); times are seconds.

    Defaults differ from Go's where Python is better served:

    * ``listeners = 1``: the reference opens one socket per core, but CPython
      runs Python code on one core at a time (the GIL), so extra listener
      threads add threads rather than throughput. Raise it only to spread
      kernel receive work. (Measured: README, "Defaults that differ".)
    * ``timeout = 2.0``: the reference waits 60 s for a reply, which stalls a
      lookup for a minute when a node has gone. Lookups here also move on
      from a slow node after ``timeout / 4`` without waiting for the timeout.

    Go's ``Logging`` switch has no field here: a node always writes to the
    standard ``logging`` module's ``dht`` loggers, each record tagged with
    the node, and the application chooses the level and where records go
    (``dht.core.nodelog``).

    ``cpus`` is an addition: pinning a process's nodes to one CPU makes them
    1.4 to 3.0 times as fast on CPython (see its docstring).
    """

    local_id: bytes | None = None
    """This node's 20-byte id; random when None."""
    listen_address: str = "127.0.0.1:0"
    """UDP ``host:port`` to bind; port 0 picks a free port."""
    bootstrap_addresses: list[str] | tuple[str, ...] = field(default_factory=list)
    """``host:port`` of nodes to join through; empty starts a new network."""
    listeners: int = 1
    """Sockets (each with its own thread) bound to ``listen_address``, which
    share its port through SO_REUSEPORT. Linux only: elsewhere (Windows has
    no SO_REUSEPORT; macOS and the BSDs hand a port's datagrams to one of
    the sockets) a node binds one socket and logs one WARNING saying so."""
    timeout: float = 2.0
    """Seconds to wait for the response to one request."""
    storage: Storage | None = None
    """Where values are kept; None means a new in-memory ``MemoryStorage``."""
    state_path: str | os.PathLike[str] | None = None
    """File where the node keeps its id and contacts, saved every 60 s and at
    ``Close`` (written whole, then renamed into place), so a restarted node
    rejoins through its previous contacts with no bootstrap address (then
    ``bootstrap_addresses`` if none of them answers) under the same id
    (unless ``local_id`` is given). A missing or unreadable file is logged
    and ignored. None: nothing saved."""
    socket_buffer_size: int = 32 * 1024 * 1024
    """SO_RCVBUF and SO_SNDBUF in bytes (the kernel may cap it)."""
    maintenance_interval: float = 60.0
    """Seconds between two rounds of a node's maintenance: liveness pings,
    verification of candidates, key transfer to contacts never served, the
    storage's expiry sweep, and the checks below for buckets to refresh and
    values to republish or replicate (which are as late as one round). Also
    how long a node served by key transfer waits before it is served again."""
    liveness_interval: float = 300.0
    """Seconds a contact may go unheard before a maintenance round pings it.
    A node lists its contacts in its answers, and each dead one costs the
    asker a wait: in a simulated network two hours into 1 h sessions, the
    median K-closest lookup took 1.42 s at 300 s, 1.60 s at 900 s (BEP 5's
    15 minutes), 2.40 s pinging only where replacements wait (the Kademlia
    paper's rule). At 60 s, three quarters of the datagrams were pings. A
    contact that fails a lookup's request is found out at once anyway."""
    refresh_interval: float = 3600.0
    """Seconds after which a bucket that no lookup has passed through is
    refreshed by a lookup of a random id in its range (the Kademlia paper,
    2.3: an hour). It used to be the liveness-check period, now
    ``liveness_interval``."""
    refresh_lookups: int = 2
    """Bucket-refresh lookups one node runs at once, at most: a node waking
    from a long pause finds every bucket due, and must not storm the network."""
    republish_interval: float = 3600.0
    """Seconds between two republications of a value this node stored
    through ``Store`` (to the then K closest nodes), or half its remaining
    lifetime when that is shorter; it stops at its expiry, at ``Close`` or
    at ``StopRepublishing``. Each copy keeps the original ``created`` and
    expiry: republishing never extends a value's life."""
    replicate_interval: float = 3600.0
    """Seconds between two rounds in which this node re-sends the values it
    holds, for which it is among the K closest, to the current K closest
    nodes (the Kademlia paper, 2.5), with their original expiry. A value
    received by STORE within the interval is not re-sent: its sender did."""
    replicate_rate: float = 64 * 1024
    """Bytes of values per second replication sends, in all, a quarter of it
    at most to one IP address. At 1,000 values of 100 bytes per node, a
    round sends about 2 MB per node an hour (a few hundred bytes per second
    on average); the cap spreads a round of a node holding much more."""
    latency_aware_routing: bool = True
    """Lookups ask, among candidates equally close to the target (the same
    distance prefix), those with the shortest measured round trip first.
    Off only to measure what it gains (``dht.sim``)."""
    timer_tick: float = 0.01
    """Resolution of the timer wheel in seconds: timeouts fire at most this late."""
    cpus: Collection[int] | None = None
    """CPUs the node's threads (listeners, timer and worker) may run on;
    None leaves them where the OS puts them. Linux only. With the GIL, only
    one thread runs Python at a time, and handing it between threads on
    different cores costs more than the work itself: giving every node of a
    process the same single CPU (``cpus={n}``) made a 100-node cluster in one
    process 1.5 to 1.9 times as fast, and a two-node request flood 1.6 to
    3.2 times (the runs in ``bench/results/results.jsonl``). Only the
    node's own threads are pinned."""
    shared_io: bool = False
    """True: one thread of the process reads the sockets and fires the
    timers of every node that sets it (one such thread per ``timer_tick``
    and ``cpus``: ``dht.loop``), instead of a listener thread per socket and
    the shared timer thread; the node's callbacks then run on that thread.
    For processes that host many nodes (tests, simulations, services with
    many identities), where handing the GIL between a hundred threads cost
    more than the protocol itself (``bench/README.md``). The ``listeners``
    sockets are still bound, all read by that one thread."""

    # Limits that keep a node on an open port bounded and hard to abuse.
    # The defaults leave a 100-node cluster on one machine unthrottled.
    max_pending_requests: int = 8192
    """Requests of ours awaiting a response; beyond it new ones fail at once."""
    request_rate: float = 2000.0
    """Requests per second accepted from one source address (after the burst)."""
    request_burst: int = 10000
    """Requests one source address may send at once."""
    amplification_limit: int = 65536
    """Bytes answered to a source that has never answered us (verified sources
    have no limit), so a forged source address cannot be flooded through us.
    All such sources of one IP address together get at most 16 times this
    at once, then this many bytes per second (ports cost an attacker
    nothing). What the cap cuts off is sent once the source answers a ping."""
    reassembly_max_records: int = 1024
    """Fragmented events being reassembled at once, per listener."""
    reassembly_max_bytes: int = 16 * 1024 * 1024
    """Bytes of fragments held, per listener."""
    reassembly_max_records_per_source: int = 64
    """Fragmented events being reassembled from one source address."""
    reassembly_max_bytes_per_source: int = 1024 * 1024
    """Bytes of fragments held for one source address."""
    max_values_per_key: int = 64
    """Values the default storage keeps under one key; more are refused."""
    max_store_bytes: int = 256 * 1024 * 1024
    """Bytes the default storage holds, counting each key and value with its
    bookkeeping (``dht.core.storage.key_cost``, ``value_cost``); more are refused."""
    max_ttl: float = 30 * 24 * 3600.0
    """Longest lifetime in seconds a value may have here. A STORE asking for
    longer is refused (the sender is told), and ``Store`` raises
    ``TTLTooLong`` for a longer ttl, since no node of ours would keep it."""
    max_answer_bytes: int = 256 * 1024
    """Bytes of values one FIND_VALUE answer carries at most; the rest of a
    larger key is left out (each request sees a different part of it, and
    ``found`` counts what the answer holds). A request costs its sender
    about 150 bytes: without a cap, one made us encode and send 2 MiB."""
    answer_rate: float = 4 * 1024 * 1024
    """Bytes per second of FIND_VALUE answers one source gets, after a burst
    of twice as much; its FIND_VALUEs beyond that are dropped unanswered. A
    source is an IP address (ports cost nothing), or one address of a local
    network while ``trust_local_networks``. The request limit alone let 200
    FIND_VALUEs a second from one address (36 KiB/s) take a whole core to
    answer. Other answers are at most a full FIND_NODE answer (about
    1.2 KB), which ``request_rate`` bounds."""
    unproven_answer_rate: float = 256 * 1024
    """Bytes per second answered to all addresses that have never answered
    us, together, after a burst of 4 s of it. Such an address may be forged,
    and its requests make us flood whoever owns it: one node sent 123 MiB to
    100 forged addresses in 10 s. An answer to one such request is also at
    most 10 times the request (a full FIND_NODE answer, all a joining node
    needs, is about 8 times); what does not fit waits for the address to
    answer a ping. Joins use a few KiB of it per node."""
    max_find_values: int = 256
    """Values one Find collects at most; it ends when it has this many.
    A key holds at most ``max_values_per_key`` values on each node, but its
    holders may hold different ones (a squatter fed one Find 1,216)."""
    max_find_bytes: int = 4 * 1024 * 1024
    """Bytes of values one Find collects at most; it ends on reaching it. A
    lying responder streamed 37 MB into one Find. Twice a key's full
    ``max_values_per_key`` of the largest values: a key squatted on this
    node fills one share, and the holders' answers, which lead with the
    values of the networks holding fewest, still find room."""
    trust_local_networks: bool = True
    """Spare loopback, private and link-local addresses the limits that count
    per IP address and per /24 network: the budget of answer bytes per IP,
    the diversity limits of lookups, answers and buckets, and the key
    transfer's budget per IP. A cluster on one machine or LAN shares one
    address or one /24, and would be throttled like a single attacker (BEP
    42 exempts local networks the same way). Set it to False on a node
    whose peers on such addresses may be hostile: the attack tests do, to
    stand in for the internet on loopback."""
    transfer_batch_bytes: int = 16384
    """Size of one STORE batch when handing values to a newly seen node."""
    transfer_interval: float = 0.02
    """Seconds between two such batches to the same node, at least: the next
    batch goes only once the node acknowledged the last."""
    transfer_rate: float = 1024 * 1024
    """Bytes of values per second key transfer sends to all newly seen nodes
    together, a quarter of it at most to one IP address (or one address of
    a trusted local network), 8 nodes at a time. Newly seen nodes cost an
    attacker a datagram or two each: 256 fresh ids a wave drew 863 MiB from
    a node holding 20 MB. At 1 MiB/s a node joining a network is still
    handed its share of a store of several GB in minutes."""

    def __post_init__(self) -> None:
        if self.local_id is not None:
            if not isinstance(self.local_id, bytes | bytearray) or len(self.local_id) != KEY_BYTES:
                raise ConfigError("local_id", f"must be {KEY_BYTES} bytes or None")
            self.local_id = bytes(self.local_id)
        if self.state_path is not None and not isinstance(self.state_path, str | os.PathLike):
            raise ConfigError("state_path", f"must be a path or None, got {self.state_path!r}")
        parse_address(self.listen_address, "listen_address")
        if not isinstance(self.bootstrap_addresses, list | tuple):
            raise ConfigError("bootstrap_addresses", "must be a list of 'host:port' strings")
        for address in self.bootstrap_addresses:
            parse_address(address, "bootstrap_addresses")
        _positive_int(self.listeners, "listeners")
        _duration(self.timeout, "timeout")
        _positive_int(self.socket_buffer_size, "socket_buffer_size")
        for name in (
            "maintenance_interval",
            "liveness_interval",
            "refresh_interval",
            "republish_interval",
            "replicate_interval",
        ):
            _duration(getattr(self, name), name)
        _duration(self.timer_tick, "timer_tick")
        if self.timer_tick > self.timeout:
            raise ConfigError("timer_tick", "must not be longer than timeout")
        for name in (
            "max_pending_requests",
            "request_burst",
            "amplification_limit",
            "reassembly_max_records",
            "reassembly_max_bytes",
            "reassembly_max_records_per_source",
            "reassembly_max_bytes_per_source",
            "max_values_per_key",
            "max_store_bytes",
            "max_answer_bytes",
            "max_find_values",
            "max_find_bytes",
            "transfer_batch_bytes",
            "refresh_lookups",
        ):
            _positive_int(getattr(self, name), name)
        _positive_number(self.request_rate, "request_rate")
        _positive_number(self.answer_rate, "answer_rate")
        _positive_number(self.transfer_rate, "transfer_rate")
        _positive_number(self.replicate_rate, "replicate_rate")
        _positive_number(self.unproven_answer_rate, "unproven_answer_rate")
        for name in ("trust_local_networks", "latency_aware_routing"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, "must be True or False")
        for name in ("max_ttl", "transfer_interval"):
            _duration(getattr(self, name), name)
        if self.cpus is not None:
            self.cpus = _cpu_set(self.cpus)
        if self.storage is not None and not isinstance(self.storage, Storage):
            raise ConfigError("storage", "must implement Get, Set and Iterate (dht.Storage)")


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def parse_address(text: str, field_name: str) -> tuple[str, int]:
    """Split ``host:port`` (an IPv4 address or a host name; an empty host is
    every interface); ConfigError naming ``field_name`` if malformed."""
    if not isinstance(text, str) or ":" not in text:
        raise ConfigError(field_name, f"{text!r} is not 'host:port'")
    if "://" in text:  # a URL: UDP nodes have no scheme, and rpartition would keep it
        bare = text.split("://", 1)[1].rstrip("/")
        raise ConfigError(field_name, f"{text!r} is a URL, not 'host:port' (write {bare!r})")
    host, _, port_text = text.rpartition(":")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 0xFFFF:
        raise ConfigError(field_name, f"{text!r} has no valid port")
    if host.startswith("[") or ":" in host:
        raise ConfigError(field_name, f"{text!r}: IPv6 is not supported (the wire has IPv4)")
    if host and not all(_HOST_LABEL.fullmatch(label) for label in host.split(".")):
        raise ConfigError(field_name, f"{text!r}: {host!r} is not a host name or IPv4 address")
    return host or "0.0.0.0", int(port_text)


def resolve(text: str, field_name: str) -> Address:
    """``host:port`` to an IPv4 ``(ip, port)``, resolving host names."""
    host, port = parse_address(text, field_name)
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)
    except OSError as error:
        raise ConfigError(field_name, f"cannot resolve {text!r}: {error}") from None
    ip, resolved_port = infos[0][4][:2]
    return str(ip), int(resolved_port)


def _cpu_set(cpus: object) -> frozenset[int]:
    if not hasattr(os, "sched_setaffinity"):
        raise ConfigError("cpus", "pinning threads needs os.sched_setaffinity (Linux)")
    if isinstance(cpus, str | bytes) or not isinstance(cpus, Collection) or not cpus:
        raise ConfigError("cpus", f"must be a non-empty collection of CPU numbers, got {cpus!r}")
    allowed = os.sched_getaffinity(0)
    for cpu in cpus:
        if not isinstance(cpu, int) or isinstance(cpu, bool) or cpu not in allowed:
            raise ConfigError(
                "cpus", f"{cpu!r} is not one of this process's CPUs {sorted(allowed)}"
            )
    return frozenset(cpus)


def _positive_int(value: object, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(name, f"must be a positive integer, got {value!r}")


MAX_DURATION_S = 1e9
"""Longest duration a ``Config`` field may give (about 31 years): longer
ones would overflow the timer wheel's tick arithmetic and int64 nanoseconds."""


def _positive_number(value: object, name: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ConfigError(name, f"must be a positive number, got {value!r}")
    if value != value or value == float("inf"):
        raise ConfigError(name, f"must be finite, got {value!r}")
    return value


def _duration(value: object, name: str) -> None:
    if _positive_number(value, name) > MAX_DURATION_S:
        raise ConfigError(name, f"must be at most {MAX_DURATION_S:g} seconds, got {value!r}")
