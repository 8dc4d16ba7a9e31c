"""The error hierarchy: everything the library raises derives from DHTError.

Bad input from the network is a ProtocolError, which the node counts and drops
(it never reaches user code). Bad input from the caller is an ArgumentError
naming what was wrong. Outcomes of Store/Find are reported with the errors at
the bottom of this module.
"""

from __future__ import annotations

import errno


class DHTError(Exception):
    """Base class of every error raised by this library."""


class ProtocolError(DHTError, ValueError):
    """A datagram or event from the network is malformed.

    ``reason`` is a short, stable slug (for example ``"short-datagram"``) that
    the node uses to count drops; the message says what exactly was wrong.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class FramingError(ProtocolError):
    """A datagram's 24-byte header or chunk is inconsistent (PROTOCOL.md 3)."""


class DecodeError(ProtocolError):
    """A reassembled event is not a valid FlatBuffers ``Event`` (PROTOCOL.md 4, 5)."""


class ReassemblyFull(ProtocolError):
    """A fragment was refused because reassembly is at its memory caps."""


class ArgumentError(DHTError, ValueError):
    """The caller passed an invalid argument; the message names it."""


class ArgumentTypeError(ArgumentError, TypeError):
    """The caller passed an argument of the wrong type (``dht.Key(3.5)``, an
    option where ``Find`` takes its callback); the message names it. A
    ``TypeError`` too, as Python's own functions raise for a wrong type."""


class ConfigError(ArgumentError):
    """A ``Config`` field is invalid. ``field`` names it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"Config.{field}: {problem}")
        self.field = field


class EventTooLarge(ArgumentError):
    """An encoded event is longer than the framing allows (65535 bytes)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"encoded event is {size} bytes, the limit is {limit} bytes")
        self.size = size
        self.limit = limit


class ValueTooLarge(ArgumentError):
    """A value is longer than the 32768 bytes the protocol allows."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"value is {size} bytes, at most {limit} bytes are allowed")
        self.size = size
        self.limit = limit


class RequestTimeout(DHTError, TimeoutError):
    """A request got no response within the timeout (seconds)."""

    def __init__(self, address: tuple[str, int], timeout: float) -> None:
        super().__init__(f"no response from {address[0]}:{address[1]} within {timeout:g} s")
        self.address = address
        self.timeout = timeout


class WrongNode(DHTError):
    """The node at an address answered under another id than the one asked
    for: the node asked for is not there."""

    def __init__(self, address: tuple[str, int], expected: bytes, answered: bytes) -> None:
        super().__init__(
            f"{address[0]}:{address[1]} answered as {answered.hex()}, not {expected.hex()}"
        )
        self.address = address
        self.expected = expected
        self.answered = answered


class BootstrapError(DHTError):
    """No bootstrap address answered, so the node could not join a network."""


class AddressInUse(DHTError, OSError):
    """``New`` could not bind ``Config.listen_address``: another socket holds
    its UDP port (another node, in this process or another, or another
    program). ``address`` is the ``host:port`` it tried; ``errno`` is
    ``EADDRINUSE``."""

    def __init__(self, address: str) -> None:
        super().__init__(errno.EADDRINUSE, f"{address} is already in use (another socket holds it)")
        self.address = address

    def __str__(self) -> str:
        return str(self.strerror)


class TTLTooLong(ArgumentError):
    """A Store's ttl is longer than ``Config.max_ttl``: no node of ours
    would keep the value that long (seconds)."""

    def __init__(self, ttl: float, limit: float) -> None:
        super().__init__(f"ttl of {ttl:g} s is longer than max_ttl ({limit:g} s)")
        self.ttl = ttl
        self.limit = limit


class StoreRefused(DHTError):
    """A node answered a STORE saying it did not keep the value, and why
    (``reasons``: slugs of ``dht.wire.refusal.REASONS``). Store reports it
    through ``StoreError``."""

    def __init__(self, address: tuple[str, int], reasons: list[str]) -> None:
        super().__init__(f"{address[0]}:{address[1]} refused the value: {', '.join(reasons)}")
        self.address = address
        self.reasons = reasons


class StoreError(DHTError):
    """Too few nodes kept a Store's value: a majority of the ``tried``
    targets must. Says how many kept it (``acknowledged``), how many refused
    it and why (``refused``: reason slug to count, see
    ``dht.wire.refusal.REASONS``), and how many never answered
    (``unanswered``). The node itself counts as a target when it is one of
    the K closest."""

    def __init__(
        self,
        key: bytes,
        tried: int,
        acknowledged: int,
        needed: int,
        refused: dict[str, int] | None = None,
        unanswered: int = 0,
    ) -> None:
        refused = dict(refused or {})
        why = [f"refused by {sum(refused.values())} ("] if refused else []
        if refused:
            why[0] += ", ".join(f"{reason}: {n}" for reason, n in sorted(refused.items())) + ")"
        if unanswered:
            why.append(f"{unanswered} did not answer")
        super().__init__(
            f"store of key {key.hex()} kept by {acknowledged} of {tried} nodes "
            f"(needed {needed})" + (": " + ", ".join(why) if why else "")
        )
        self.key = key
        self.tried = tried
        self.acknowledged = acknowledged
        self.needed = needed
        self.refused = refused
        self.unanswered = unanswered


class NotFoundError(DHTError, LookupError):
    """A Find ended without finding any value for the key. ``queried``: how
    many nodes it asked (answered or not); ``answered``: how many of them
    answered, or None when the caller did not count them."""

    def __init__(self, key: bytes, queried: int = 0, answered: int | None = None) -> None:
        asked = f"asked {queried} node{'s' * (queried != 1)}"
        if not queried:
            how = "no other node known to ask"
        elif answered is None:
            # Asked is not answered: a Find whose every request timed out
            # must not read as 20 nodes saying "no value".
            how = f"{asked}; none that answered held a value"
        elif not answered:
            how = f"{asked}, none answered"
        else:
            how = f"{asked}, {answered} answered without a value"
        super().__init__(f"no value found for key {key.hex()} ({how})")
        self.key = key
        self.queried = queried
        self.answered = answered


class ClosedError(DHTError):
    """The node was closed before the operation could finish."""
