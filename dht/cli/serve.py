"""``dht node``: run a node until Ctrl-C or SIGTERM, then close it and exit 0."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType

from ..config import Config
from ..core.storage import MemoryStorage
from ..node import DHT
from ..sqlite_storage import SQLiteStorage
from ..wire.events import NS_PER_SECOND
from .common import node_config, say, start_node
from .terminal import Summary

TERMINAL_INTERVAL = 5.0
"""Seconds between summary lines when standard output is a terminal."""


class _Stopper:
    """SIGINT and SIGTERM handling: while the node joins, a signal abandons
    the join (KeyboardInterrupt; ``New`` leaves nothing behind); once it
    runs, a signal sets ``stop``, and the main loop closes it."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.joining = True

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.stop.set()
        if self.joining:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def run(args: argparse.Namespace) -> int:
    prog: str = args.prog
    stopper = _Stopper()
    with stopper.installed():
        cfg = node_config(args)
        storage = _storage(args.storage, cfg)
        with contextlib.ExitStack() as closing:
            if isinstance(storage, SQLiteStorage):
                closing.callback(storage.close)
            try:
                node = start_node(dataclasses.replace(cfg, storage=storage))
            except KeyboardInterrupt:
                say(prog, "stopped before it had joined")
                return 0
            finally:
                stopper.joining = False
            try:
                _serve(prog, node, storage, stopper.stop, _interval(args.interval))
            finally:
                node.Close()
        say(prog, "closed")
    return 0


def _serve(
    prog: str,
    node: DHT,
    storage: MemoryStorage | SQLiteStorage,
    stop: threading.Event,
    interval: float,
) -> None:
    contacts = node.stats()["routing-table-size"]
    say(
        prog,
        f"listening on {node.address} as {node.id.hex()}, {contacts} contacts; "
        "Ctrl-C or SIGTERM stops it",
    )
    summary = Summary(node, storage.__len__)
    started = time.monotonic()
    while not stop.wait(interval or 1.0):
        if interval:
            say(prog, summary.line())
    say(prog, f"stopping after {time.monotonic() - started:.0f} s: {summary.line()}")


def _interval(option: float | None) -> float:
    if option is not None:
        return option
    return TERMINAL_INTERVAL if sys.stdout.isatty() else 0.0


def _storage(path: str | None, cfg: Config) -> MemoryStorage | SQLiteStorage:
    """The node's storage, given ``cfg``'s limits (a node hands its limits
    only to a storage it builds itself); ours, to count its values."""
    max_ttl_ns = int(cfg.max_ttl * NS_PER_SECOND)
    if path is None:
        return MemoryStorage(
            max_values_per_key=cfg.max_values_per_key,
            max_bytes=cfg.max_store_bytes,
            max_ttl_ns=max_ttl_ns,
        )
    return SQLiteStorage(
        path,
        max_values_per_key=cfg.max_values_per_key,
        max_bytes=cfg.max_store_bytes,
        max_ttl_ns=max_ttl_ns,
    )
