"""``dht node``: run a node until Ctrl-C or SIGTERM, then close it and exit 0."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType

from ..config import Config
from ..core.storage import MemoryStorage
from ..metrics import MetricsServer, node_exposition
from ..node import DHT
from ..sqlite_storage import SQLiteStorage
from ..wire.events import NS_PER_SECOND
from .common import CommandError, node_config, say, start_node
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
            # Bound before the join: a port in use fails at once.
            metrics = _metrics_server(args.metrics)
            if metrics is not None:
                closing.callback(metrics.close)
            try:
                node = start_node(dataclasses.replace(cfg, storage=storage))
            except KeyboardInterrupt:
                say(prog, "stopped before it had joined")
                return 0
            finally:
                stopper.joining = False
            try:
                # Only once joined: a failed join is one line, the error.
                _log_to_stderr(args.log_level)
                _serve(prog, node, storage, stopper.stop, _interval(args.interval), metrics)
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
    metrics: MetricsServer | None = None,
) -> None:
    contacts = node.stats()["routing-table-size"]
    say(
        prog,
        f"listening on {node.address} as {node.id.hex()}, {contacts} contacts; "
        "Ctrl-C or SIGTERM stops it",
    )
    if metrics is not None:
        metrics.start(lambda: node_exposition(node))
        say(prog, f"serving metrics at http://{metrics.address}/metrics")
    summary = Summary(node, storage.__len__)
    started = time.monotonic()
    while not stop.wait(interval or 1.0):
        if interval:
            say(prog, summary.line())
    say(prog, f"stopping after {time.monotonic() - started:.0f} s: {summary.line()}")


def _metrics_server(address: str | None) -> MetricsServer | None:
    if address is None:
        return None
    try:
        return MetricsServer(address)
    except OSError as error:
        raise CommandError(
            f"--metrics: cannot serve on {address}: {error.strerror or error}"
        ) from None


def _log_to_stderr(level: str) -> None:
    """The application's logging set-up (the library does none): records
    of ``level`` and up to standard error, one line each."""
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


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
