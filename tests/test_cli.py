"""The ``dht`` console script, run as a user runs it: real processes, real
UDP sockets on 127.0.0.1. Every wait is bounded by a deadline."""

from __future__ import annotations

import dataclasses
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import free_udp_address, wait_until
from test_metrics import scrape

import dht
from dht.cli import main
from dht.cli.common import OPTION_OF_FIELD, parse_key
from dht.cli.options import config_docs

DHT = Path(sys.executable).with_name("dht")
"""The console script pip installed beside this Python."""
COMMAND = 30.0
"""Longest wait for one command (generous: the machine may be loaded)."""


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    assert DHT.is_file(), f"{DHT} is missing: install the package (pip install -e .)"
    return subprocess.run(
        [str(DHT), *args], input=stdin, capture_output=True, timeout=COMMAND, check=False
    )


def one_line(text: bytes) -> str:
    """The one line an error must be, without a traceback."""
    lines = text.decode().splitlines()
    assert len(lines) == 1, f"expected one line, got: {text.decode()!r}"
    return lines[0]


class NodeProcess:
    """A running ``dht node``; its standard output read line by line."""

    def __init__(self, *args: str, stderr: Path) -> None:
        self._stderr_path = stderr
        self._stderr = stderr.open("wb")
        self.proc = subprocess.Popen(
            [str(DHT), "node", *args], stdout=subprocess.PIPE, stderr=self._stderr, text=True
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        listening = self.expect(r"listening on (\S+) as ([0-9a-f]{40}), (\d+) contacts")
        self.address, self.id = listening.group(1, 2)
        self.contacts = int(listening.group(3))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def expect(self, pattern: str, timeout: float = COMMAND) -> re.Match[str]:
        """The first line from now on that matches ``pattern``."""
        deadline = time.monotonic() + timeout
        seen = []
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                break
            seen.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no line matching {pattern!r} in {seen}; stderr: {self.stderr()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` and return the exit status."""
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=COMMAND)

    def stderr(self) -> str:
        self._stderr.flush()
        return self._stderr_path.read_text()

    def kill(self) -> None:
        """Kill the process if it still runs; close the pipe and the file."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=COMMAND)
        self._reader.join(timeout=COMMAND)  # it ends at the pipe's end
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._stderr.close()


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    """Two ``dht node`` processes, the first with two listeners."""
    logs = tmp_path_factory.mktemp("nodes")
    nodes: list[NodeProcess] = []
    try:
        nodes.append(NodeProcess("--listen", "127.0.0.1:0", "--listeners", "2", stderr=logs / "0"))
        bootstrap = ["--bootstrap", nodes[0].address]
        nodes.append(NodeProcess("--listen", "127.0.0.1:0", *bootstrap, stderr=logs / "1"))
        yield nodes
        for node in nodes:
            assert node.stop() == 0
            assert node.stderr() == ""
    finally:
        for node in nodes:
            node.kill()


# ---------------------------------------------------------------------------
# put and get


@pytest.mark.timeout(60)
def test_put_then_get_through_node_processes(network: list[NodeProcess]) -> None:
    first, second = (node.address for node in network)
    stored = run("put", "greeting", "hello", "--bootstrap", first, "--ttl", "600")
    assert stored.returncode == 0, stored.stderr
    key = dht.Key("greeting").hex()
    assert one_line(stored.stdout) == f"dht put: stored 5 bytes under key {key} for 600 s"
    assert stored.stderr == b""

    found = run("get", "greeting", "--bootstrap", second)
    assert (found.returncode, found.stdout, found.stderr) == (0, b"hello\n", b"")
    # The key as 40 hex digits is the same key.
    found = run("get", key.upper(), "--bootstrap", first, "--all")
    assert (found.returncode, found.stdout) == (0, b"hello\n")

    # A second value, its bytes from standard input (not UTF-8), under the raw key.
    binary = bytes(range(128, 256))
    stored = run("put", key, "-", "--bootstrap", second, stdin=binary)
    assert stored.returncode == 0, stored.stderr
    found = run("get", "greeting", "--bootstrap", first, "--all")
    assert found.returncode == 0, found.stderr
    assert sorted(found.stdout.split(b"\n")) == sorted([b"", b"hello", binary])


@pytest.mark.timeout(60)
def test_get_of_a_missing_key_fails_with_one_line(network: list[NodeProcess]) -> None:
    result = run("get", "never stored", "--bootstrap", network[0].address)
    assert (result.returncode, result.stdout) == (1, b"")
    missing = dht.Key("never stored").hex()
    assert one_line(result.stderr).startswith(
        f"dht get: not found: no value found for key {missing}"
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("listeners", ["1", "3"])
def test_a_node_on_a_port_in_use_fails_with_one_line(
    network: list[NodeProcess], listeners: str
) -> None:
    """The first node of ``network`` holds its port with two listeners."""
    address = network[0].address
    result = run("node", "--listen", address, "--listeners", listeners)
    assert (result.returncode, result.stdout) == (1, b"")
    assert one_line(result.stderr) == (
        f"dht node: cannot listen on {address}: the port is in use "
        "(another node or program holds it)"
    )
    result = run("get", "k", "--listen", network[1].address, "--bootstrap", address)
    assert result.returncode == 1
    assert "the port is in use" in one_line(result.stderr)


# ---------------------------------------------------------------------------
# dht node


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_closes_the_node_and_exits_0(tmp_path: Path, sig: int) -> None:
    node = NodeProcess("--listen", "127.0.0.1:0", "--interval", "0.05", stderr=tmp_path / "err")
    try:
        node.expect(r"^dht node: contacts \d+, values \d+, events in [\d.]+/s, drops \d+")
        assert node.stop(sig) == 0
        node.expect(r"^dht node: closed$")
        assert node.stderr() == ""
    finally:
        node.kill()


@pytest.mark.timeout(60)
def test_a_node_restarted_with_its_state_rejoins_without_bootstrap(
    network: list[NodeProcess], tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    args = ("--listen", "127.0.0.1:0", "--state", str(state))
    node = NodeProcess(*args, "--bootstrap", network[0].address, stderr=tmp_path / "first")
    try:
        assert node.stop() == 0 and node.stderr() == ""
    finally:
        node.kill()
    again = NodeProcess(*args, stderr=tmp_path / "again")  # no --bootstrap
    try:
        assert again.id == node.id and again.contacts >= len(network)
        assert again.stop() == 0 and again.stderr() == ""
    finally:
        again.kill()


@pytest.mark.timeout(60)
def test_a_signal_while_joining_exits_0(tmp_path: Path) -> None:
    """A node still waiting for its bootstrap node stops at once."""
    silent = free_udp_address()
    proc = subprocess.Popen(
        [str(DHT), "node", "--listen", "127.0.0.1:0", "--bootstrap", silent, "--timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        # Its signal handlers are installed once it has a socket (/proc
        # shows it; nothing is printed while it joins).
        assert wait_until(lambda: _has_socket(proc.pid), COMMAND)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=COMMAND)
        assert proc.returncode == 0
        assert (out, err) == (b"dht node: stopped before it had joined\n", b"")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=COMMAND)


def _has_socket(pid: int) -> bool:
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
        return any(fd.readlink().name.startswith("socket:") for fd in fds)
    except OSError:  # a race with the process starting, or no /proc
        return False


@pytest.mark.timeout(60)
def test_a_node_keeps_its_values_in_its_storage_file(tmp_path: Path) -> None:
    path = str(tmp_path / "node.db")
    node = NodeProcess("--listen", "127.0.0.1:0", "--storage", path, stderr=tmp_path / "1")
    try:
        stored = run("put", "kept", "in a file", "--bootstrap", node.address)
        assert stored.returncode == 0, stored.stderr
        assert node.stop() == 0
    finally:
        node.kill()
    node = NodeProcess("--listen", "127.0.0.1:0", "--storage", path, stderr=tmp_path / "2")
    try:
        found = run("get", "kept", "--bootstrap", node.address)
        assert (found.returncode, found.stdout) == (0, b"in a file\n")
        assert node.stop() == 0
    finally:
        node.kill()


@pytest.mark.timeout(60)
def test_a_node_serves_its_metrics_to_prometheus(tmp_path: Path) -> None:
    node = NodeProcess("--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0", stderr=tmp_path / "e")
    try:
        url = node.expect(r"serving metrics at (http://127\.0\.0\.1:\d+/metrics)$").group(1)
        stored = run("put", "measured", "value", "--bootstrap", node.address)
        assert stored.returncode == 0, stored.stderr
        families = scrape(url)
        assert node.stop() == 0
        assert node.stderr() == ""
    finally:
        node.kill()
    assert families["dht_stored_values"].value("dht_stored_values") == 1
    assert families["dht_routing_table_size"].value("dht_routing_table_size") == 1
    # The put's node asked this one to find the key's closest nodes, then to store.
    assert families["dht_requests_received_total"].value("dht_requests_received_total") >= 2
    [(_, info)] = families["dht_node_info"].samples
    assert dict(info)["address"] == node.address


@pytest.mark.timeout(60)
def test_a_node_writes_the_librarys_log_records_from_its_log_level(tmp_path: Path) -> None:
    node = NodeProcess("--listen", "127.0.0.1:0", "--log-level", "INFO", stderr=tmp_path / "e")
    try:
        assert node.stop() == 0
        port = node.address.rpartition(":")[2]
        pattern = rf"INFO dht\.node: \[[0-9a-f]{{8}}@127\.0\.0\.1:{port}\] closed"
        assert re.search(pattern, node.stderr()), node.stderr()
    finally:
        node.kill()


@pytest.mark.timeout(60)
def test_a_metrics_port_in_use_is_one_line_and_exit_1() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        result = run("node", "--listen", "127.0.0.1:0", "--metrics", address)
    assert (result.returncode, result.stdout) == (1, b"")
    assert one_line(result.stderr) == (
        f"dht node: --metrics: cannot serve on {address}: Address already in use"
    )


# ---------------------------------------------------------------------------
# Errors: one line on stderr, a non-zero exit


def _error_cases() -> list[tuple[list[str], int, str]]:
    free = "127.0.0.1:9"  # never sent to: each case fails before joining
    return [
        (["node", "--listen", "nonsense"], 2, "argument --listen: 'nonsense' is not 'host:port'"),
        (["put", "k", "v", "--bootstrap", "127.0.0.1"], 2, "'127.0.0.1' is not 'host:port'"),
        (["get", "k", "--bootstrap", "127.0.0.1:70000"], 2, "'127.0.0.1:70000' has no valid port"),
        (["get", "k", "--bootstrap", "127.0.0.1:0"], 2, "port 0 is no node's port"),
        (["get", "k"], 2, "the following arguments are required: --bootstrap"),
        (["put", "k", "v", "--bootstrap", free, "--ttl", "-1"], 2, "--ttl: '-1' is not above 0"),
        (["put", "k", "v", "--bootstrap", free, "--ttl", "soon"], 2, "'soon' is not a number"),
        (["put", "k", "v", "--bootstrap", free, "--ttl", "inf"], 2, "'inf' is not a finite number"),
        (
            ["put", "k", "v", "--bootstrap", free, "--ttl", "1e12"],
            2,
            "ttl of 1e+12 s is longer than max_ttl",
        ),
        (
            ["put", "k", "v" * 32769, "--bootstrap", free],
            2,
            "value is 32769 bytes, at most 32768 bytes are allowed",
        ),
        (["node", "--listen", "127.0.0.1:0", "--listeners", "0"], 2, "'0' is not above 0"),
    ]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("args", "status", "message"), _error_cases(), ids=lambda x: str(x)[:40])
def test_a_bad_argument_is_one_line_and_exit_2(args: list[str], status: int, message: str) -> None:
    result = run(*args)
    assert (result.returncode, result.stdout) == (status, b"")
    line = one_line(result.stderr)
    assert line.startswith(f"dht {args[0]}: ") and message in line


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "command", [["get", "k"], ["put", "k", "v"], ["node", "--listen", "127.0.0.1:0"]]
)
def test_no_bootstrap_node_answering_is_one_line_and_exit_1(command: list[str]) -> None:
    silent = free_udp_address()
    result = run(*command, "--bootstrap", silent, "--timeout", "0.2")
    assert (result.returncode, result.stdout) == (1, b"")
    assert one_line(result.stderr) == (
        f"dht {command[0]}: could not join the network: no bootstrap node answered "
        f"({silent}): no response from {silent} within 0.2 s"
    )


# ---------------------------------------------------------------------------
# dht demo, python -m dht, help


@pytest.mark.timeout(60)
def test_demo_prints_a_summary() -> None:
    result = run("demo", "--nodes", "4", "--keys", "20", "--concurrency", "4")
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    out = result.stdout.decode()
    assert "\r" not in out  # plain lines, not a bar, when not on a terminal
    assert re.search(r"^stores: 20/20$", out, re.MULTILINE)
    assert re.search(r"^nodes +4 on 127\.0\.0\.1 \(joined in [\d.]+ s\)$", out, re.MULTILINE)
    for label in ("stores", "finds"):
        pattern = rf"^{label} +20/20 ok +[\d.]+ ops/s +p50 [\d.]+ ms +p99 [\d.]+ ms$"
        assert re.search(pattern, out, re.MULTILINE), out
    assert out.endswith("success  100.0 % (40 of 40 operations)\n")


@pytest.mark.timeout(60)
def test_python_m_dht_is_the_same_command() -> None:
    module = subprocess.run(
        [sys.executable, "-m", "dht", "--help"], capture_output=True, timeout=COMMAND, check=False
    )
    script = run("--help")
    assert (module.returncode, script.returncode) == (0, 0)
    assert module.stdout == script.stdout and module.stdout.startswith(b"usage: dht ")


@pytest.mark.timeout(10)
@pytest.mark.parametrize("command", ["node", "put", "get"])
def test_the_help_of_config_options_is_configs_documentation(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = config_docs()
    assert set(docs) == {f.name for f in dataclasses.fields(dht.Config)}
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    options = {"node": OPTION_OF_FIELD, "put": {}, "get": {}}[command] or {
        field: option
        for field, option in OPTION_OF_FIELD.items()
        if field not in ("listeners", "state_path")
    }
    for field, option in options.items():
        doc = " ".join(docs[field].replace("``", "").split())
        if command != "node" and field == "bootstrap_addresses":  # required there
            doc = doc.split(";")[0]
        assert f"{option} " in help_text and doc in help_text, field


@pytest.mark.timeout(10)
def test_keys_are_40_hex_digits_or_text_hashed_with_dht_key() -> None:
    raw = bytes(range(20))
    assert parse_key(raw.hex()) == raw
    assert parse_key(raw.hex().upper()) == raw
    assert parse_key("greeting") == dht.Key("greeting")
    assert parse_key(raw.hex()[:-1]) == dht.Key(raw.hex()[:-1])  # 39 digits: text
    assert parse_key("") == dht.Key("")
