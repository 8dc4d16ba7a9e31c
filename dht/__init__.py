"""dht: a Kademlia distributed hash table, wire compatible with purehyperbole/dht."""

from .errors import (
    ArgumentError,
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
    ValueTooLarge,
)
from .keys import ALPHA, KEY_BITS, KEY_BYTES, K, Key
from .wire.events import Value

__all__ = [
    "ALPHA",
    "KEY_BITS",
    "KEY_BYTES",
    "ArgumentError",
    "BootstrapError",
    "ClosedError",
    "ConfigError",
    "DHTError",
    "DecodeError",
    "EventTooLarge",
    "FramingError",
    "K",
    "Key",
    "NotFoundError",
    "ProtocolError",
    "ReassemblyFull",
    "RequestTimeout",
    "StoreError",
    "Value",
    "ValueTooLarge",
]
