"""How a node says it did not keep what a STORE asked (schema/PROTOCOL.md,
"Refusals").

The Go wire format has no refusal: a STORE response carries nothing, and a
Go requester counts any response with the request's id as a copy kept. So a
node that refused a value must not answer under the request's id. It answers
under the id's bitwise complement instead: a Go node finds no request of
that id and ignores the event (it sees the timeout, which is the truth),
while our nodes match the complement to their request and read why. The
refusal is an ordinary STORE response whose ``Store`` payload lists the
refused values: each with its key and, as its bytes, the reason (one of
``REASONS``).
"""

from __future__ import annotations

from .events import Event, EventType, Store, Value

REASONS = {
    "invalid": "the value is malformed (over 32768 bytes, or a ttl of 0 or less)",
    "expired": "the value's lifetime had already ended",
    "ttl": "the value would live longer than this node's max_ttl",
    "full": "this node's store has no room for the sender's network",
    "key-full": "the key holds as many values as this node allows",
    "publisher": "a copy from another network is kept; only its publisher extends its life",
    "refused": "the node's storage refused or failed",
}
"""Reason slugs a refusal may carry, and what each means."""
LISTED = 8
"""Refused values one refusal lists at most (it stays small: it may go to
an address that has never answered us)."""


def refusal_id(event_id: bytes) -> bytes:
    """The id a refusal of the STORE ``event_id`` is sent under (and the
    other way round: the complement is its own inverse)."""
    return (int.from_bytes(event_id, "big") ^ ((1 << (8 * len(event_id))) - 1)).to_bytes(
        len(event_id), "big"
    )


def refusal(request: Event, local_id: bytes, refused: list[tuple[bytes, str]]) -> Event:
    """The refusal of ``request``: ``refused`` holds ``(key, reason)`` of
    each value not kept (the first ``LISTED`` are sent)."""
    listed = tuple(Value(key, reason.encode(), 0) for key, reason in refused[:LISTED])
    return Event(refusal_id(request.id), local_id, EventType.STORE, True, Store(listed))


def reasons(event: Event) -> list[str]:
    """The reasons a refusal gives, one per listed value (unknown ones read
    as ``"refused"``); ``["refused"]`` if it lists none."""
    payload = event.payload
    listed = payload.values if isinstance(payload, Store) else ()
    out = []
    for value in listed:
        reason = value.value.decode("ascii", "replace")
        out.append(reason if reason in REASONS else "refused")
    return out or ["refused"]
