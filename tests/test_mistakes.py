"""Mistakes a new user makes, each caught at the call with a ``DHTError``
that names the problem (issue 18, item 8)."""

from __future__ import annotations

import pytest
from cluster import config, running_cluster, wait_until

import dht

pytestmark = pytest.mark.timeout(30)
KEY = dht.Key("mistakes")


@pytest.fixture(scope="module")
def node() -> dht.DHT:
    with dht.New(config()) as node:
        yield node  # type: ignore[misc]


@pytest.mark.parametrize("option", [dht.FirstValue(), dht.ValuesFrom(0)], ids=type)
def test_a_find_option_in_the_callbacks_place(node: dht.DHT, option: object) -> None:
    with pytest.raises(dht.ArgumentTypeError, match="options come after the callback") as caught:
        node.Find(KEY, option)  # type: ignore[arg-type]
    assert isinstance(caught.value, TypeError) and isinstance(caught.value, dht.DHTError)
    assert "Find(key, None, dht." in str(caught.value)
    assert node.stats()["pending-requests"] == 0
    assert node.Find(KEY, None, option).exception(timeout=10) is not None  # Go's order works


def test_a_callback_that_is_not_callable(node: dht.DHT) -> None:
    with pytest.raises(dht.ArgumentTypeError, match="Find's callback must be callable"):
        node.Find(KEY, "print")  # type: ignore[arg-type]
    with pytest.raises(dht.ArgumentTypeError, match="Store's callback must be callable"):
        node.Store(KEY, b"v", 60, 42)  # type: ignore[arg-type]
    with pytest.raises(dht.ArgumentTypeError, match="unknown Find option"):
        node.Find(KEY, None, "FirstValue")  # type: ignore[arg-type]


def test_wrong_types_are_type_errors_naming_the_argument(node: dht.DHT) -> None:
    for call, words in [
        (lambda: dht.Key(3.5), "dht.Key takes str, bytes or int, not float"),
        (lambda: dht.Key(None), "not NoneType"),  # type: ignore[arg-type]
        (lambda: node.Find("greeting"), "key must be 20 bytes, not str"),  # type: ignore[arg-type]
        (lambda: node.Store(KEY, "text", 60), "value must be bytes, not str"),  # type: ignore[arg-type]
        (lambda: node.Store(KEY, b"v", "60"), "ttl must be seconds"),  # type: ignore[arg-type]
    ]:
        with pytest.raises(dht.ArgumentTypeError, match=words) as caught:
            call()
        assert isinstance(caught.value, TypeError)


def test_an_integer_key_out_of_range_is_a_value_error() -> None:
    with pytest.raises(dht.ArgumentError, match="signed 64-bit") as caught:
        dht.Key(1 << 64)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("http://127.0.0.1:9000", "is a URL, not 'host:port' \\(write '127.0.0.1:9000'\\)"),
        ("udp://127.0.0.1:9000/", "is a URL"),
        ("[::1]:9000", "IPv6 is not supported"),
        ("127.0.0.1/8:9000", "is not a host name or IPv4 address"),
        ("user@host:9000", "is not a host name or IPv4 address"),
        ("127.0.0.1:", "has no valid port"),
    ],
)
def test_addresses_that_are_not_host_port(address: str, words: str) -> None:
    for field in ("listen_address", "bootstrap_addresses"):
        value: object = address if field == "listen_address" else [address]
        with pytest.raises(dht.ConfigError, match=words) as caught:
            dht.Config(**{field: value})  # type: ignore[arg-type]
        assert caught.value.field == field
        assert str(caught.value).startswith(f"Config.{field}: ")


def test_host_names_and_every_interface_are_addresses() -> None:
    for address in ("localhost:9000", "node-1.example.org:9000", ":9000", "0.0.0.0:0"):
        dht.Config(listen_address=address)


def test_not_found_says_how_many_were_asked_not_that_they_answered() -> None:
    assert "(no other node known to ask)" in str(dht.NotFoundError(KEY))
    asked = str(dht.NotFoundError(KEY, 20))
    assert "asked 20 nodes" in asked and "queried" not in asked
    assert "asked 1 node, none answered" in str(dht.NotFoundError(KEY, 1, answered=0))
    assert "asked 20 nodes, 17 answered" in str(dht.NotFoundError(KEY, 20, answered=17))


def test_a_find_no_node_answered_does_not_claim_answers() -> None:
    with running_cluster(2) as nodes:
        # Node 0 lists node 1 once it answered node 0's ping.
        assert wait_until(lambda: len(nodes[0]._engine.table) == 1, 10.0)
        nodes[1].Close()  # node 0 still lists it; its requests go unanswered
        error = nodes[0].Find(KEY).exception(timeout=10)
    assert isinstance(error, dht.NotFoundError)
    assert "asked 1 node, none answered" in str(error) and "queried" not in str(error)
    assert error.answered == 0
