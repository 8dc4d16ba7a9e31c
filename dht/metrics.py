"""A node's ``stats()`` in the Prometheus text format, over HTTP.

``exposition(stats)`` renders a ``stats()`` snapshot in the text format
version 0.0.4 (``# HELP`` and ``# TYPE`` once per family, counters named
``..._total``, durations in seconds); ``MetricsServer`` serves it at
``/metrics`` from a daemon thread (``dht node --metrics HOST:PORT`` runs
one). Names follow the ``stats()`` keys: ``datagrams-received`` is
``dht_datagrams_received_total``, ``stored-bytes`` is ``dht_stored_bytes``,
``drop-<reason>`` is ``dht_drop_total{reason="<reason>"}``; the lookup
figures become ``dht_lookups_total{kind}``, ``dht_lookup_failures_total{kind}``
and two summaries per kind, ``dht_lookup_duration_seconds`` and
``dht_lookup_queried_nodes`` (p50 and p99 of the recent lookups, sums and
counts over the node's life). Help texts come from ``dht.core.stats.STATS``,
where each key is documented.

Why the standard library and not ``prometheus_client``: the format is a few
lines of text per metric, and what is exposed is a snapshot of ``stats()``
taken at each scrape, which in ``prometheus_client`` would be a custom
collector of about the same size as this renderer, plus a runtime
dependency (DESIGN: a dependency must earn its place) and a process-wide
default registry that several nodes in one process would share. A program
that already runs ``prometheus_client`` can serve ``exposition(...)`` or
wrap ``stats()`` in a collector of its own.
"""

from __future__ import annotations

import http.server
import math
import threading
from collections.abc import Callable, Mapping

from .config import parse_address
from .core import nodelog
from .core.stats import FAMILIES, LOOKUPS, STATS, describe
from .node import DHT

log = nodelog.logger("dht.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "dht_"
QUANTILES = {"p50": "0.5", "p99": "0.99"}
"""The ``stats()`` quantile suffixes, as Prometheus quantile labels."""

Labels = tuple[tuple[str, str], ...]


class _Family:
    """One metric family: its help, its type, and its samples in order."""

    def __init__(self, kind: str, help: str) -> None:
        self.kind = kind
        self.help = help
        self.samples: list[tuple[str, Labels, float | int]] = []


class _Families:
    def __init__(self) -> None:
        self.by_name: dict[str, _Family] = {}

    def add(
        self,
        name: str,
        kind: str,
        help: str,
        value: float | int,
        labels: Labels = (),
        suffix: str = "",
    ) -> None:
        family = self.by_name.setdefault(name, _Family(kind, help))
        family.samples.append((name + suffix, labels, value))

    def render(self) -> str:
        lines = []
        for name, family in self.by_name.items():
            lines.append(f"# HELP {name} {_escape_help(family.help)}")
            lines.append(f"# TYPE {name} {family.kind}")
            for sample, labels, value in family.samples:
                lines.append(f"{sample}{_labels(labels)} {_number(value)}")
        return "\n".join(lines) + "\n"


def exposition(stats: Mapping[str, int], info: Mapping[str, str] | None = None) -> str:
    """``stats`` (a ``DHT.stats()`` snapshot) in the Prometheus text format
    0.0.4; ``info`` (say the node's id and address) becomes the labels of
    ``dht_node_info``, whose value is 1. A key ``STATS`` does not document
    is still exposed, as ``untyped``."""
    families = _Families()
    if info is not None:
        families.add(
            PREFIX + "node_info", "gauge", "The node (labels); always 1.", 1, tuple(info.items())
        )
    lookup_keys = _lookups(stats, families)
    for key in sorted(stats):
        if key in lookup_keys:
            continue
        stat = describe(key)
        value = stats[key]
        if stat is None:
            families.add(_name(key), "untyped", f"Undocumented stats key {key!r}.", value)
            continue
        help = f"{stat.meaning} Unit: {stat.unit}."
        labels: Labels = ()
        name = _name(key)
        if key not in STATS:  # a family's: its prefix is the name, the rest a label
            prefix = next(prefix for prefix in FAMILIES if key.startswith(prefix))
            labels = (("reason", key[len(prefix) :]),)
            name = _name(prefix.rstrip("-"))
        if stat.kind == "counter":
            name += "_total"
        families.add(name, stat.kind, help, value, labels)
    return families.render()


def _lookups(stats: Mapping[str, int], families: _Families) -> set[str]:
    """Add the lookup families; the ``stats`` keys they took."""
    taken: set[str] = set()
    for kind in LOOKUPS:
        keys = {name: f"{kind}-{name}" for name in _LOOKUP_KEYS}
        if not all(key in stats for key in keys.values()):
            continue
        taken.update(keys.values())
        figures = {name: stats[key] for name, key in keys.items()}
        labels: Labels = (("kind", kind),)
        done = figures["done"]
        families.add(
            PREFIX + "lookups_total", "counter", "Lookups ended, succeeded or not.", done, labels
        )
        families.add(
            PREFIX + "lookup_failures_total",
            "counter",
            "Lookups ended with an error (not found, not stored, no answer, closed).",
            figures["failed"],
            labels,
        )
        for name, help, figure, unit, per_unit in _SUMMARIES:
            help += " (quantiles of the recent ones; sum and count of all)."
            for quantile, label in QUANTILES.items():
                value = _scaled(figures[f"{figure}-{quantile}{unit}"], per_unit)
                families.add(name, "summary", help, value, (*labels, ("quantile", label)))
            total = _scaled(figures[f"{figure}-total{unit}"], per_unit)
            families.add(name, "summary", help, total, labels, "_sum")
            families.add(name, "summary", help, done, labels, "_count")
    return taken


_SUMMARIES = (
    (PREFIX + "lookup_duration_seconds", "Lookup durations in seconds", "duration", "-us", 10**6),
    (PREFIX + "lookup_queried_nodes", "Nodes a lookup sent a request to", "queried", "", 1),
)
"""Each lookup summary: its name and help; the figure of ``stats()``, its
unit suffix, and how many of that unit make one of the summary's."""
_LOOKUP_KEYS = (
    "done",
    "failed",
    *(
        f"{figure}-{part}{unit}"
        for _, _, figure, unit, _ in _SUMMARIES
        for part in (*QUANTILES, "total")
    ),
)
"""The ``stats()`` keys of one kind of lookup, after ``<kind>-``."""


def _scaled(value: int, per_unit: int) -> float | int:
    return value if per_unit == 1 else value / per_unit


def _name(key: str) -> str:
    return PREFIX + key.replace("-", "_")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{_escape_label(value)}"' for name, value in labels) + "}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def node_exposition(node: DHT) -> str:
    """``node``'s ``stats()`` in the text format, with its id and address."""
    return exposition(node.stats(), {"id": node.id.hex(), "address": node.address})


class MetricsServer:
    """An HTTP server of ``collect()`` (the text of ``exposition``) at
    ``/metrics`` (and ``/``), on ``address`` (``host:port``; port 0 picks
    one, see ``address``).

    The socket is bound on construction (``OSError`` if it cannot be, as
    when the port is held), so a command can fail before it starts a node; ``start``
    begins serving, from a daemon thread, each request on a thread of its
    own; ``collect`` runs there (``DHT.stats`` is thread-safe). ``close``
    stops it and waits for the thread. Also a context manager.
    """

    def __init__(self, address: str) -> None:
        host, port = parse_address(address, "metrics")
        self._server = _Server((host, port), _Handler)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """The bound ``host:port``."""
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def start(self, collect: Callable[[], str]) -> None:
        """Serve ``collect()`` from now on, on a daemon thread."""
        self._server.collect = collect
        self._thread = threading.Thread(
            target=nodelog.bound(self._server.serve_forever),
            name=f"dht-metrics-{self._server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving and close the socket. Idempotent."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    collect: Callable[[], str]  # set by start(), before any request is handled


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path not in ("/metrics", "/"):
            self.send_error(404, "only /metrics is served here")
            return
        try:
            body = self.server.collect().encode()
        except Exception:  # a bug in collecting must not end the server
            log.exception("collecting metrics failed")
            self.send_error(500, "collecting metrics failed")
            return
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s: " + format, self.address_string(), *args)
