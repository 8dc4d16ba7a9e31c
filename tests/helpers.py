"""Shared test helpers: the Go reference vectors and how to read them.

The vectors live outside the repository (``../shared/vectors``, relative to the
repository root) or wherever ``$DHT_VECTORS`` points. Tests that need them skip
with a reason naming the path when the file is absent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dht.wire import Event, EventType, FindNode, FindValue, Node, Store, Value
from dht.wire.fb import Event as fb_event
from dht.wire.fb import FindNode as fb_find_node
from dht.wire.fb import FindValue as fb_find_value
from dht.wire.fb import Node as fb_node
from dht.wire.fb import Store as fb_store
from dht.wire.fb import Value as fb_value
from dht.wire.framing import HEADER_SIZE

TESTS_DIR = Path(__file__).resolve().parent
REPO_DIR = TESTS_DIR.parent
DEFAULT_VECTORS_PATH = REPO_DIR.parent / "shared" / "vectors" / "go-reference-vectors.json"

Vector = dict[str, Any]


def vectors_path() -> Path:
    """``$DHT_VECTORS`` if set, else ``<repo>/../shared/vectors/go-reference-vectors.json``."""
    configured = os.environ.get("DHT_VECTORS")
    return Path(configured) if configured else DEFAULT_VECTORS_PATH


def vectors_skip_reason() -> str:
    return (
        f"Go reference vectors not found at {vectors_path()} "
        "(set DHT_VECTORS to the path of go-reference-vectors.json)"
    )


def load_vectors() -> list[Vector] | None:
    """The parsed vector list, or None when the file is absent."""
    path = vectors_path()
    if not path.is_file():
        return None
    with path.open(encoding="utf-8") as file:
        loaded = json.load(file)
    assert isinstance(loaded, list), f"{path} does not hold a JSON list"
    return loaded


# ---------------------------------------------------------------------------
# Reading a vector


def datagrams(vector: Vector) -> list[bytes]:
    return [bytes.fromhex(datagram) for datagram in vector["datagrams"]]


def chunks(vector: Vector) -> list[bytes]:
    """The event bytes each datagram carries (everything after the header)."""
    return [datagram[HEADER_SIZE:] for datagram in datagrams(vector)]


def event_bytes(vector: Vector) -> bytes:
    """The serialized event: the concatenated chunks."""
    return b"".join(chunks(vector))


def parse_address(text: str) -> tuple[str, int]:
    """``"ip:port"`` to ``(ip, port)``."""
    host, sep, port = text.rpartition(":")
    assert sep and host, f"bad address {text!r} in vector"
    return host, int(port)


def _hex(value: str | None) -> bytes | None:
    return None if value is None else bytes.fromhex(value)


def _nodes(items: list[dict[str, Any]] | None) -> tuple[Node, ...]:
    return tuple(
        Node(bytes.fromhex(item["id"]), parse_address(item["address"])) for item in items or ()
    )


def _values(items: list[dict[str, Any]] | None) -> tuple[Value, ...]:
    return tuple(
        Value(
            key=bytes.fromhex(item["key"]),
            value=_hex(item["value"]) or b"",
            ttl_ns=item["ttl"],
            created_ns=item["created"],
        )
        for item in items or ()
    )


def expected_event(event: dict[str, Any]) -> Event:
    """Build the ``dht.wire.Event`` a vector's ``event`` object describes.

    Absent (null) and empty vectors both become empty tuples (``b""`` for a
    value's bytes); an absent key is None. The payload table is chosen by
    ``payload_table``; ``from`` maps to ``from_ns``.
    """
    table = event["payload_table"]
    fields = event["payload"]
    payload: Store | FindNode | FindValue | None
    if table is None:
        assert fields is None
        payload = None
    elif table == "Store":
        payload = Store(values=_values(fields["values"]))
    elif table == "FindNode":
        payload = FindNode(key=_hex(fields["key"]), nodes=_nodes(fields["nodes"]))
    elif table == "FindValue":
        payload = FindValue(
            key=_hex(fields["key"]),
            values=_values(fields["values"]),
            nodes=_nodes(fields["nodes"]),
            from_ns=fields["from"],
            found=fields["found"],
        )
    else:
        raise AssertionError(f"unknown payload_table {table!r}")
    return Event(
        id=bytes.fromhex(event["id"]),
        sender=bytes.fromhex(event["sender"]),
        type=EventType[event["event_type"]],
        response=event["response"],
        payload=payload,
    )


def assert_events_equal(actual: Event, expected: Event) -> None:
    """Compare two events field by field (clear messages), then as a whole."""
    assert type(actual) is Event
    assert actual.id == expected.id, "event id"
    assert actual.sender == expected.sender, "sender"
    assert actual.type is expected.type, "event type"
    assert actual.response is expected.response, "response flag"
    if expected.payload is None:
        assert actual.payload is None, "payload"
    else:
        assert type(actual.payload) is type(expected.payload), "payload class"
        for name in type(expected.payload).__slots__:
            got = getattr(actual.payload, name)
            want = getattr(expected.payload, name)
            if isinstance(want, tuple):
                assert len(got) == len(want), f"payload.{name}: count"
                for index, (got_item, want_item) in enumerate(zip(got, want, strict=True)):
                    assert got_item == want_item, f"payload.{name}[{index}]"
            else:
                assert got == want, f"payload.{name}"
    assert actual == expected


# ---------------------------------------------------------------------------
# An independent reader built on the flatc-generated classes


def _bytes(length: int, get: Any) -> bytes:
    return bytes(get(index) for index in range(length))


def _fb_nodes(length: int, get: Any) -> tuple[Node, ...]:
    result = []
    for index in range(length):
        node: fb_node.Node = get(index)
        address = _bytes(node.AddressLength(), node.Address)
        assert len(address) == 6
        host = ".".join(str(octet) for octet in address[:4])
        port = int.from_bytes(address[4:], "little")
        result.append(Node(_bytes(node.IdLength(), node.Id), (host, port)))
    return tuple(result)


def _fb_values(length: int, get: Any) -> tuple[Value, ...]:
    result = []
    for index in range(length):
        value: fb_value.Value = get(index)
        result.append(
            Value(
                key=_bytes(value.KeyLength(), value.Key),
                value=_bytes(value.ValueLength(), value.Value),
                ttl_ns=value.Ttl(),
                created_ns=value.Created(),
            )
        )
    return tuple(result)


def read_with_generated(buf: bytes) -> Event:
    """Read an event with the generated FlatBuffers classes only.

    The payload table is chosen by the event type, as PROTOCOL.md 4.4 requires.
    """
    root = fb_event.Event.GetRootAs(buf, 0)
    event_type = EventType(root.Event())
    table = root.Payload()
    payload: Store | FindNode | FindValue | None = None
    if table is not None:
        if event_type is EventType.STORE:
            store = fb_store.Store()
            store.Init(table.Bytes, table.Pos)
            payload = Store(_fb_values(store.ValuesLength(), store.Values))
        elif event_type is EventType.FIND_NODE:
            find_node = fb_find_node.FindNode()
            find_node.Init(table.Bytes, table.Pos)
            key = None if find_node.KeyIsNone() else _bytes(find_node.KeyLength(), find_node.Key)
            payload = FindNode(key, _fb_nodes(find_node.NodesLength(), find_node.Nodes))
        elif event_type is EventType.FIND_VALUE:
            find_value = fb_find_value.FindValue()
            find_value.Init(table.Bytes, table.Pos)
            key = None if find_value.KeyIsNone() else _bytes(find_value.KeyLength(), find_value.Key)
            payload = FindValue(
                key=key,
                values=_fb_values(find_value.ValuesLength(), find_value.Values),
                nodes=_fb_nodes(find_value.NodesLength(), find_value.Nodes),
                from_ns=find_value.From(),
                found=find_value.Found(),
            )
        else:
            raise AssertionError(f"{event_type.name} event carries a payload")
    return Event(
        id=_bytes(root.IdLength(), root.Id),
        sender=_bytes(root.SenderLength(), root.Sender),
        type=event_type,
        response=root.Response(),
        payload=payload,
    )
