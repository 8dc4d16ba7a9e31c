"""A node's saved state (``Config.state_path``): its id and contacts.

The file is JSON, written whole to a temporary file beside it and renamed
into place (``os.replace`` is atomic on POSIX and Windows), so a reader never
sees half a file and a crash mid-save leaves the previous one::

    {"version": 1, "id": "<40 hex>",
     "contacts": [{"id": "<40 hex>", "address": "127.0.0.1:9001"}, ...]}

Contacts are listed most recently heard from first. Reading never raises: a
missing file or one that is not of this format is logged and read as none.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass

from .core import nodelog
from .core.routing import Contact
from .keys import KEY_BYTES
from .wire.events import Address

log = nodelog.logger("dht.state")

VERSION = 1
SAVE_INTERVAL = 60.0
"""Seconds between two saves of a running node's state."""
MAX_SAVED = 256
"""Contacts written at most (the most recently heard from): enough to find
a way back after most of them have gone, small enough to rewrite every minute."""
REJOIN_CONTACTS = 64
"""Saved contacts a restarted node asks at once when it rejoins."""


@dataclass(frozen=True)
class SavedState:
    """What a state file holds: the node's id and its contacts' ids and
    ``(ip, port)`` addresses, most recently heard from first."""

    node_id: bytes
    contacts: tuple[tuple[bytes, Address], ...]


def load(path: str | os.PathLike[str]) -> SavedState | None:
    """The state saved at ``path``; None (and one log line saying why) when
    there is none or it cannot be read."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        log.info("no saved state at %s yet: joining through the bootstrap addresses", path)
        return None
    except OSError as error:
        log.warning("cannot read the saved state at %s (%s): ignoring it", path, error)
        return None
    try:
        return _parse(json.loads(data))
    except (
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
    ) as error:  # JSON errors are ValueErrors
        log.warning("the saved state at %s is not a dht state file (%s): ignoring it", path, error)
        return None


def save(path: str | os.PathLike[str], state: SavedState) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync,
    rename). Raises ``OSError`` if it cannot: the previous file is then
    left as it was."""
    text = json.dumps(
        {
            "version": VERSION,
            "id": state.node_id.hex(),
            "contacts": [
                {"id": node_id.hex(), "address": f"{host}:{port}"}
                for node_id, (host, port) in state.contacts[:MAX_SAVED]
            ],
        },
        indent=1,
    )
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".dht-state-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text + "\n")
            file.flush()
            os.fsync(file.fileno())  # the data is on disk before the name points at it
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def ordered(contacts: Iterable[Contact]) -> tuple[tuple[bytes, Address], ...]:
    """``(id, address)`` of routing-table contacts, at most ``MAX_SAVED``:
    the live ones most recently heard from first, then the suspect ones."""
    ranked = sorted(contacts, key=lambda c: (c.suspect, -c.last_seen))
    return tuple((c.id, c.address) for c in ranked[:MAX_SAVED])


def _parse(document: object) -> SavedState:
    if not isinstance(document, dict) or document.get("version") != VERSION:
        raise ValueError(f"expected a version {VERSION} object")
    node_id = _node_id(document["id"])
    contacts = []
    for entry in document["contacts"]:
        host, _, port = entry["address"].rpartition(":")
        ipaddress.IPv4Address(host)  # we save IPs: a name here was not written by us
        if not port.isdigit() or not 0 < int(port) <= 0xFFFF:
            raise ValueError(f"bad contact address {entry['address']!r}")
        contacts.append((_node_id(entry["id"]), (host, int(port))))
    return SavedState(node_id, tuple(contacts))


def _node_id(text: object) -> bytes:
    if not isinstance(text, str):
        raise TypeError(f"an id must be hex text, got {text!r}")
    node_id = bytes.fromhex(text)
    if len(node_id) != KEY_BYTES:
        raise ValueError(f"an id must be {KEY_BYTES} bytes, got {len(node_id)}")
    return node_id
