"""Logging: the ``dht`` logger hierarchy, every record naming its node, what
goes out at WARNING (bootstrap failure, listener errors, bursts of drops,
rate-limited), and no logging set-up by the library. Real nodes on
127.0.0.1; every wait bounded by a deadline."""

from __future__ import annotations

import errno
import logging
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from cluster import add_node, close_all, free_udp_address, start_cluster, wait_until

import dht
from dht.core.nodelog import NO_NODE, Bursts, acting_as, bound, logger, node_tag

WAIT = 10.0


def tag(node: dht.DHT) -> str:
    host, _, port = node.address.rpartition(":")
    return node_tag(node.id, (host, int(port)))


def records(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


@pytest.fixture
def debug(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.DEBUG, logger="dht"):
        yield caplog


# ---------------------------------------------------------------------------
# Every record names its node


@pytest.mark.timeout(30)
def test_records_of_two_nodes_in_one_process_name_their_node(
    debug: pytest.LogCaptureFixture,
) -> None:
    nodes = start_cluster(2)
    a, b = nodes
    try:
        # A listener thread: each node discovers the other (DEBUG).
        assert wait_until(lambda: len(records(debug, "discovered node")) >= 2, WAIT)
        # The shared timer thread: b's Find of a key no node answers for (a
        # is gone) ends by a timeout, and its callback, which raises, is
        # logged there.
        a.Close()

        def raising(value: bytes | None, error: Exception | None) -> None:
            raise RuntimeError("a bug in a user callback")

        b.Find(dht.Key("nowhere"), raising)
        assert wait_until(lambda: records(debug, "callback"), WAIT)
    finally:
        close_all(nodes)
    own = {tag(a): a, tag(b): b}
    for record in debug.records:
        assert record.name.startswith("dht.")
        assert record.node in own, (record.node, record.getMessage())  # type: ignore[attr-defined]
        assert record.getMessage().startswith(f"[{record.node}] ")  # type: ignore[attr-defined]
    discovered = records(debug, "discovered node")
    assert {r.node for r in discovered} == set(own)  # type: ignore[attr-defined]
    for record in discovered:  # each names the other node
        other = b if record.node == tag(a) else a  # type: ignore[attr-defined]
        assert other.id.hex() in record.getMessage()
        assert record.levelno == logging.DEBUG and record.name == "dht.engine"
    [callback] = records(debug, "callback")
    assert (callback.levelno, callback.node, callback.threadName) == (  # type: ignore[attr-defined]
        logging.ERROR,
        tag(b),
        "dht-timer",
    )
    for node, text in [(a, "listening on"), (b, "joined"), (a, "closed"), (b, "closed")]:
        [record] = [r for r in records(debug, text) if r.node == tag(node)]  # type: ignore[attr-defined]
        assert (record.name, record.levelno) == ("dht.node", logging.INFO)


def test_a_record_outside_any_nodes_work_says_so(debug: pytest.LogCaptureFixture) -> None:
    log = logger("dht.test")
    log.info("no node")
    with acting_as("cafe0001@127.0.0.1:1"):
        log.info("a node")
        later = bound(lambda: log.info("scheduled by a node"))
    log.info("no node again")
    # A library thread runs it as the node that scheduled it.
    thread = threading.Thread(target=later)
    thread.start()
    thread.join(WAIT)
    got = [(r.node, r.getMessage()) for r in debug.records]  # type: ignore[attr-defined]
    assert got == [
        (NO_NODE, "no node"),
        ("cafe0001@127.0.0.1:1", "[cafe0001@127.0.0.1:1] a node"),
        (NO_NODE, "no node again"),
        ("cafe0001@127.0.0.1:1", "[cafe0001@127.0.0.1:1] scheduled by a node"),
    ]
    with pytest.raises(ValueError, match="hierarchy"):
        logger("elsewhere")


# ---------------------------------------------------------------------------
# WARNING: bootstrap failure, listener errors, bursts of drops


@pytest.mark.timeout(30)
def test_a_bootstrap_failure_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    silent = free_udp_address()
    with caplog.at_level(logging.WARNING, logger="dht"), pytest.raises(dht.BootstrapError):
        dht.New(dht.Config(bootstrap_addresses=[silent], timeout=0.2))
    [record] = caplog.records
    assert (record.name, record.levelno) == ("dht.node", logging.WARNING)
    assert "bootstrap failed: no bootstrap node answered" in record.getMessage()
    assert silent in record.getMessage()
    assert re.fullmatch(r"[0-9a-f]{8}@127\.0\.0\.1:\d+", record.node)  # type: ignore[attr-defined]


class _FailingSocket:
    """A socket whose reads fail (``EIO``), as an unexpected listener error."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def recvfrom_into(self, buffer: bytearray) -> tuple[int, object]:
        raise OSError(errno.EIO, "injected read error")

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)


@pytest.mark.timeout(30)
def test_listener_read_errors_are_one_warning_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    node = add_node(None)
    listener = node._listeners[0]
    real = listener.sock
    try:
        with caplog.at_level(logging.WARNING, logger="dht"):
            listener.sock = _FailingSocket(real)  # type: ignore[assignment]
            # The datagram stays unread: each wake-up of the loop fails again.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                sender.sendto(b"x", real.getsockname())
                assert wait_until(lambda: node.stats().get("receive-error", 0) >= 20, WAIT)
            listener.sock = real
        [record] = caplog.records
        assert (record.name, record.levelno) == ("dht.listener", logging.WARNING)
        assert record.getMessage().startswith(f"[{tag(node)}] receive-error: 1 in 0.0 s")
        assert "injected read error" in record.getMessage()
        # The listener goes on once reads work again.
        assert wait_until(lambda: node.stats().get("drop-short-datagram", 0) == 1, WAIT)
    finally:
        listener.sock = real
        node.Close()


@pytest.mark.timeout(30)
def test_a_listener_that_stops_on_an_error_is_a_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = add_node(None)
    listener = node._listeners[0]
    try:

        def broken(buffer: bytearray, view: memoryview) -> None:
            raise OSError(errno.EBADF, "injected loop error")

        with caplog.at_level(logging.WARNING, logger="dht"):
            monkeypatch.setattr(listener, "_drain", broken)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                sender.sendto(b"x", listener.sock.getsockname())
            assert wait_until(lambda: not listener.thread.is_alive(), WAIT)
        [record] = caplog.records
        assert (record.name, record.levelno, record.node) == (  # type: ignore[attr-defined]
            "dht.listener",
            logging.WARNING,
            tag(node),
        )
        assert "stopped: [Errno 9] injected loop error; this socket no longer receives" in (
            record.getMessage()
        )
    finally:
        node.Close()


@pytest.mark.timeout(30)
def test_a_burst_of_drops_is_one_warning_and_each_datagram_a_debug_record(
    debug: pytest.LogCaptureFixture,
) -> None:
    node = add_node(None)
    try:
        host, _, port = node.address.rpartition(":")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for _ in range(300):
                sender.sendto(b"junk", (host, int(port)))
        assert wait_until(lambda: node.stats().get("drop-short-datagram", 0) == 300, WAIT)
    finally:
        node.Close()
    per_datagram = records(debug, "dropped a datagram from 127.0.0.1:")
    assert len(per_datagram) == 300
    assert {r.levelno for r in per_datagram} == {logging.DEBUG}
    # 300 drops in well under the 10 s interval: one WARNING, at the 100th.
    [burst] = [r for r in debug.records if r.levelno >= logging.WARNING]
    assert burst.name == "dht.node" and burst.node == tag(node)  # type: ignore[attr-defined]
    assert "drop-short-datagram: 100 in " in burst.getMessage()
    assert "(100 since the last such warning)" in burst.getMessage()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bursts_write_at_most_one_record_per_reason_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    bursts = Bursts(logger("dht.test"), clock, interval=10.0, threshold=5)

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    with caplog.at_level(logging.WARNING, logger="dht"):
        for _ in range(4):
            bursts.note("drop-a")
        assert warnings() == []  # under the threshold: no burst
        clock.now += 1.5
        bursts.note("drop-a")
        assert warnings() == ["drop-a: 5 in 1.5 s (5 since the last such warning)"]
        for _ in range(50):  # the same window: counted, not written
            bursts.note("drop-a")
        bursts.note("drop-b", 7)  # another reason has its own limit
        assert warnings()[1:] == ["drop-b: 7 in 0.0 s (7 since the last such warning)"]
        clock.now += 10.0  # a new window, below the threshold again
        bursts.note("drop-a", 4)
        assert len(warnings()) == 2
        clock.now += 2.0
        bursts.note("drop-a", 3, detail="why")
        assert warnings()[2:] == ["drop-a: 7 in 2.0 s (57 since the last such warning): why"]


# ---------------------------------------------------------------------------
# The library configures no logging; Config.logging is gone


def test_the_library_adds_no_handler_but_a_null_one() -> None:
    program = (
        "import logging, dht\n"
        "node = dht.New()\n"
        "node.Store(dht.Key('k'), b'v', 60).result()\n"
        "node.Close()\n"
        "handlers = {name: [type(h).__name__ for h in logging.getLogger(name).handlers]\n"
        "            for name in ['', *logging.root.manager.loggerDict]}\n"
        "print({name: h for name, h in handlers.items() if h})\n"
        "print(logging.root.level, logging.getLogger('dht').level)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout.splitlines() == ["{'dht': ['NullHandler']}", "30 0"]
    assert result.stderr == ""


def test_config_has_no_logging_switch() -> None:
    with pytest.raises(TypeError, match="logging"):
        dht.Config(logging=True)  # type: ignore[call-arg]
