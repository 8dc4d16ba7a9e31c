"""dht: a Kademlia distributed hash table, wire compatible with purehyperbole/dht.

import dht
with dht.New() as first, dht.New(dht.Config(bootstrap_addresses=[first.address])) as node:
    node.Store(dht.Key("greeting"), b"hello", ttl=3600).result()
    print(first.Find(dht.Key("greeting")).result())

``dht.aio`` is the asyncio front end (``import dht.aio``).
"""

from .config import Config
from .core.storage import MemoryStorage, Storage
from .errors import (
    AddressInUse,
    ArgumentError,
    ArgumentTypeError,
    BootstrapError,
    ClosedError,
    ConfigError,
    DecodeError,
    DHTError,
    EventTooLarge,
    FramingError,
    NotFoundError,
    ProtocolError,
    ReassemblyFull,
    RequestTimeout,
    StoreError,
    StoreRefused,
    TTLTooLong,
    ValueTooLarge,
    WrongNode,
)
from .keys import ALPHA, KEY_BITS, KEY_BYTES, K, Key
from .node import DHT, FirstValue, New, ValuesFrom
from .sqlite_storage import SQLiteStorage
from .wire.events import Value

__all__ = [
    "ALPHA",
    "DHT",
    "KEY_BITS",
    "KEY_BYTES",
    "AddressInUse",
    "ArgumentError",
    "ArgumentTypeError",
    "BootstrapError",
    "ClosedError",
    "Config",
    "ConfigError",
    "DHTError",
    "DecodeError",
    "EventTooLarge",
    "FirstValue",
    "FramingError",
    "K",
    "Key",
    "MemoryStorage",
    "New",
    "NotFoundError",
    "ProtocolError",
    "ReassemblyFull",
    "RequestTimeout",
    "SQLiteStorage",
    "Storage",
    "StoreError",
    "StoreRefused",
    "TTLTooLong",
    "Value",
    "ValueTooLarge",
    "ValuesFrom",
    "WrongNode",
]
