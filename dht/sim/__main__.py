"""``python -m dht.sim``: simulate a network and print a report.

    python -m dht.sim --nodes 10000 --loss 0.05 --churn 1h --seed 1

builds the network by joins, stores ``--stores`` values, runs ``--lookups``
Finds (half K-closest, half FirstValue) and prints what they cost (see
``report``). The report is the same, byte for byte, for the same arguments,
but for its last section (wall time and memory, after ``== timing``), which
``--no-timing`` leaves out. A progress bar goes to stderr when it is a
terminal (a line every tenth of the run otherwise; ``--quiet``: none).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from .churn import format_duration, parse_duration
from .report import render, to_json
from .scenario import Scenario, Simulation


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _churn(text: str) -> float | None:
    if text.lower() in ("0", "none", "off", "no"):
        return None
    seconds = _duration(text)
    return seconds or None


def _fraction(text: str) -> float:
    value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not in [0, 1)")
    return value


def parser() -> argparse.ArgumentParser:
    default = Scenario()
    p = argparse.ArgumentParser(
        prog="python -m dht.sim",
        description="Simulate a network of the library's nodes on virtual time and report "
        "lookup success, hops, latency, traffic and replicas. Durations take a unit: "
        "ms, s, m, h, d (seconds without one).",
    )
    add = p.add_argument
    add("--nodes", type=int, default=default.nodes, help="population (default %(default)s)")
    add("--loss", type=_fraction, default=default.loss, help="datagram loss, 0.05 or 5%%")
    add("--churn", type=_churn, default=None, help="median session length, e.g. 1h (default: none)")
    add(
        "--churn-shape",
        type=float,
        default=None,
        help="Weibull shape of the sessions (default: exponential)",
    )
    add("--seed", type=int, default=default.seed)
    add("--stores", type=int, default=default.stores, help="values stored (default %(default)s)")
    add("--lookups", type=int, default=default.lookups, help="Finds run (default %(default)s)")
    add(
        "--duration",
        type=_duration,
        default=default.duration,
        help=f"time over which the lookups start (default {format_duration(default.duration)})",
    )
    add(
        "--join-time",
        type=_duration,
        default=None,
        help="time over which the nodes join (default: nodes / 100 s, at least 30 s)",
    )
    add(
        "--store-time",
        type=_duration,
        default=default.store_time,
        help=f"time over which the stores start (default {format_duration(default.store_time)})",
    )
    add(
        "--settle",
        type=_duration,
        default=default.settle,
        help="pause after the joins and after the stores "
        f"(default {format_duration(default.settle)})",
    )
    add(
        "--sample-interval",
        type=_duration,
        default=default.sample_interval,
        help="time between two counts of the replicas (default %(default)ss)",
    )
    add(
        "--median-rtt",
        type=_duration,
        default=default.median_rtt,
        help="median round trip of a pair of nodes (default 80ms)",
    )
    add(
        "--rtt-sigma",
        type=float,
        default=default.rtt_sigma,
        help="log-normal sigma of the round trips (default %(default)s)",
    )
    add("--value-size", type=int, default=default.value_size, help="bytes per value")
    add(
        "--timeout",
        type=_duration,
        default=default.timeout,
        help="the engine's request timeout (default: Config's, %(default)ss)",
    )
    add(
        "--refresh-interval",
        type=_duration,
        default=default.refresh_interval,
        help="bucket refresh (default: Config's, %(default)ss)",
    )
    add(
        "--republish-interval",
        type=_duration,
        default=default.republish_interval,
        help="republishing by the publisher (default: Config's, %(default)ss)",
    )
    add(
        "--replicate-interval",
        type=_duration,
        default=default.replicate_interval,
        help="replication by the holders (default: Config's, %(default)ss)",
    )
    add(
        "--no-maintenance",
        action="store_true",
        help="no bucket refresh, republishing or replication (their intervals at 1e9 s)",
    )
    add(
        "--no-latency-aware",
        action="store_true",
        help="lookups ignore round trips (Config.latency_aware_routing off)",
    )
    add(
        "--slow-fraction",
        type=_fraction,
        default=default.slow_fraction,
        help="share of the nodes that are slow, 0.1 or 10%% (default none)",
    )
    add(
        "--slow-factor",
        type=float,
        default=default.slow_factor,
        help="a pair with a slow node takes this many times its round trip (default %(default)s)",
    )
    add(
        "--ttl",
        type=_duration,
        default=default.ttl,
        help="lifetime of the stored values (default 24h)",
    )
    add(
        "--probes",
        type=int,
        default=default.probes,
        help="FirstValue Finds of random stored values at each count of the replicas",
    )
    add(
        "--short-stores",
        type=int,
        default=default.short_stores,
        help="values stored with --short-ttl beside the others, each probed at every count",
    )
    add(
        "--short-ttl",
        type=_duration,
        default=default.short_ttl,
        help="lifetime of those (default 1h)",
    )
    add(
        "--trust-local-networks",
        action="store_true",
        help="spare the nodes the per-address and per-/24 limits (as on a LAN)",
    )
    add("--json", metavar="PATH", help="also write the raw figures there")
    add("--no-timing", action="store_true", help="leave wall time and memory out of the report")
    add("--quiet", action="store_true", help="no progress on stderr")
    return p


class ProgressBar:
    """Progress on ``stream``: a bar redrawn in place on a terminal, else
    a line at each tenth of the run."""

    def __init__(self, stream: TextIO, started: float) -> None:
        self.stream = stream
        self.started = started
        self.tty = stream.isatty()
        self._shown = -1

    def __call__(self, now: float, end: float, phase: str) -> None:
        done = min(1.0, now / end) if end else 1.0
        wall = time.monotonic() - self.started
        if self.tty:
            step = int(done * 200)
            if step == self._shown:
                return
            self._shown = step
            filled = int(done * 30)
            self.stream.write(
                f"\r[{'#' * filled}{'.' * (30 - filled)}] {100 * done:5.1f}% "
                f"virtual {now:,.0f}/{end:,.0f} s ({phase}), wall {wall:,.0f} s "
            )
        else:
            step = int(done * 10)
            if step == self._shown:
                return
            self._shown = step
            self.stream.write(
                f"dht.sim: {100 * done:.0f}% virtual {now:,.0f}/{end:,.0f} s ({phase}), "
                f"wall {wall:,.0f} s\n"
            )
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._shown >= 0:
            self.stream.write("\n")
            self.stream.flush()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.nodes < 1 or min(args.stores, args.lookups, args.probes, args.short_stores) < 0:
        parser().error("--nodes must be at least 1, the counts not negative")
    if args.slow_factor < 1:
        parser().error("--slow-factor must be at least 1")
    scenario = Scenario(
        nodes=args.nodes,
        loss=args.loss,
        churn=args.churn,
        churn_shape=args.churn_shape,
        seed=args.seed,
        stores=args.stores,
        lookups=args.lookups,
        join_time=args.join_time,
        settle=args.settle,
        store_time=args.store_time,
        duration=args.duration,
        sample_interval=args.sample_interval,
        median_rtt=args.median_rtt,
        rtt_sigma=args.rtt_sigma,
        value_size=args.value_size,
        timeout=args.timeout,
        refresh_interval=args.refresh_interval,
        republish_interval=args.republish_interval,
        replicate_interval=args.replicate_interval,
        maintenance=not args.no_maintenance,
        latency_aware=not args.no_latency_aware,
        trust_local_networks=args.trust_local_networks,
        slow_fraction=args.slow_fraction,
        slow_factor=args.slow_factor,
        ttl=args.ttl,
        probes=args.probes,
        short_stores=args.short_stores,
        short_ttl=args.short_ttl,
    )
    started = time.monotonic()
    progress = None if args.quiet else ProgressBar(sys.stderr, started)
    results = Simulation(scenario).run(progress)
    if progress is not None:
        progress.close()
    timing = {
        "wall_s": time.monotonic() - started,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    sys.stdout.write(render(results, timing=None if args.no_timing else timing))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(to_json(results, timing=timing), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
