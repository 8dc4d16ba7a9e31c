"""Running callbacks (user code, or the engine's own) on a library thread."""

from __future__ import annotations

from collections.abc import Callable

from . import nodelog

log = nodelog.logger("dht.engine")


def call_safely(fn: Callable[..., object], *args: object) -> object:
    """Run a callback; log and swallow what it raises (it must not kill a thread)."""
    try:
        return fn(*args)
    except Exception:
        log.exception("callback %r raised", fn)
        return None


def ignore(*_: object) -> bool:
    """A response or failure callback for a request whose outcome is not needed."""
    return True
