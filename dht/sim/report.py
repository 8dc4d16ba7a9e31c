"""The text report of a run, and its raw figures as JSON.

The report is a function of the results alone, which are a function of
the scenario (its seed included): the same arguments give the same bytes.
What the machine decides (wall time, memory) goes in a last section of its
own, after a line starting ``== timing``, which ``--no-timing`` leaves out
and comparisons of runs cut off.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from ..wire.events import EventType
from .scenario import OFF, Checkpoint, Probe, Results
from .trace import CLOSEST, FIRST, LookupTrace

TIMING_MARK = "== timing"
"""The line that starts the section that varies from run to run."""
MODES = ((CLOSEST, "K-closest"), (FIRST, "FirstValue"))
STEADY_AFTER = 3600.0
"""Seconds into the lookups phase after which traffic counts as steady
(past the first round of bucket refresh, republishing and replication)."""


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile of ``values`` (0 < q <= 1) by the nearest-rank
    method: a value of the list, no interpolation. NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def spread(values: Sequence[float], scale: float = 1.0, digits: int = 0) -> str:
    """``p50/p90/p99`` of ``values`` times ``scale``."""
    if not values:
        return "-"
    return "/".join(f"{percentile(values, q) * scale:.{digits}f}" for q in (0.5, 0.9, 0.99))


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.2f}%" if whole else "-"


def _n(count: float) -> str:
    return f"{count:,.0f}"


def render(results: Results, *, timing: dict[str, float] | None = None) -> str:
    """The report; ``timing`` (wall seconds, memory, ...) adds the last section."""
    lines: list[str] = []
    add = lines.append
    scenario, timeline = results.scenario, results.timeline
    sessions = scenario.sessions()
    add(f"dht.sim: {_n(scenario.nodes)} nodes, seed {scenario.seed}")
    model = scenario.latency()
    add(f"  network: {100 * scenario.loss:g}% of datagrams lost; {model.describe()}")
    churn = "none" if sessions is None else sessions.describe()
    add(f"  churn: {churn}" + ("; each node that leaves is replaced" if sessions else ""))
    add(
        f"  engine: the library's core with Config's defaults (timeout {scenario.timeout:g} s, "
        f"refresh_interval {scenario.refresh_interval:g} s), "
        f"Limits(trust_local_networks={scenario.trust_local_networks}); an address per node"
    )
    config = scenario.config()
    if scenario.maintenance:
        upkeep = (
            f"maintenance on (bucket refresh {config.refresh_interval:g} s, republish "
            f"{config.republish_interval:g} s, replicate {config.replicate_interval:g} s)"
        )
    else:
        upkeep = f"maintenance off (refresh, republish, replicate every {OFF:g} s)"
    aware = "on" if scenario.latency_aware else "off"
    add(f"  {upkeep}; latency-aware routing {aware}")
    last_end = max((t.end for t in results.traces if t.end is not None), default=math.nan)
    add(
        f"  timeline (virtual s): joins 0-{timeline.joins_end:g}, stores {timeline.stores:g}-"
        f"{timeline.stores + scenario.store_time:g}, lookups {timeline.lookups:g}-"
        f"{timeline.end:g}, last lookup ended {last_end:.1f}"
    )
    measured = percentile(results.pair_rtts, 0.5) * 1e3
    add(
        f"  median pair round trip: {scenario.median_rtt * 1e3:.1f} ms by the model, "
        f"{measured:.1f} ms over {_n(len(results.pair_rtts))} random pairs of joined nodes"
    )
    add(f"  events processed: {_n(results.events_processed)}")

    p = results.population
    add("")
    add(
        f"population: {_n(p['created'])} nodes created ({_n(scenario.nodes)} initial, "
        f"{_n(p['replacements'])} in place of one that left); {_n(p['join_retries'])} join "
        f"retries, {_n(p['join_failures'])} gave up; {_n(p['live_at_end'])} live at the end"
    )

    stores = results.stores
    outcomes = {o: sum(s.outcome == o for s in stores) for o in ("ok", "failed", "aborted")}
    add(
        f"stores: {_n(len(stores))}; succeeded {_n(outcomes['ok'])} "
        f"({_pct(outcomes['ok'], len(stores))}), failed {outcomes['failed']}, "
        f"aborted {outcomes['aborted']} (origin left), "
        f"unfinished {len(stores) - sum(outcomes.values())}"
    )

    short = results.short_stores
    if short:
        ok = sum(s.outcome == "ok" for s in short)
        add(
            f"short-lived stores (ttl {scenario.short_ttl:g} s): {_n(len(short))}; "
            f"succeeded {_n(ok)}"
        )
    add(
        f"  values' ttl {scenario.ttl:g} s, {scenario.value_size} bytes each; "
        f"stored from t = {timeline.stores:g} s"
    )

    add("")
    _lookups(results, add)
    add("")
    _traffic(results, add)
    add("")
    _replicas(results, add)
    add("")
    if results.probes:
        _retention(results, add)
        add("")
    if steady_span(results) is not None:
        _steady(results, add)
        add("")
    counters = results.counters
    add("engine counters (all nodes, whole run):")
    items = [f"{name} {_n(count)}" for name, count in counters.items()]
    for start in range(0, len(items), 4):
        add("  " + ", ".join(items[start : start + 4]))
    if timing is not None:
        add("")
        add(f"{TIMING_MARK} (varies from run to run; --no-timing leaves it out)")
        add(
            f"  wall {timing['wall_s']:.1f} s, peak memory {timing['maxrss_mb']:,.0f} MB "
            f"(ru_maxrss), {_n(results.events_processed / max(timing['wall_s'], 1e-9))} events/s"
        )
    return "\n".join(lines) + "\n"


def _lookups(results: Results, add: Any) -> None:
    by_mode = {mode: [t for t in results.traces if t.mode == mode] for mode, _ in MODES}
    add(f"{'lookups':<34}" + "".join(f"{label:>18}" for _, label in MODES))

    def row(title: str, cell: Any) -> None:
        add(f"  {title:<32}" + "".join(f"{cell(by_mode[mode]):>18}" for mode, _ in MODES))

    def ran(traces: list[LookupTrace]) -> list[LookupTrace]:
        return [t for t in traces if t.outcome != "aborted"]

    def found(traces: list[LookupTrace]) -> list[LookupTrace]:
        return [t for t in traces if t.outcome == "found"]

    row("run (origin stayed)", lambda ts: _n(len(ran(ts))))
    row("found the value", lambda ts: f"{_pct(len(found(ts)), len(ran(ts)))} ({len(found(ts))})")
    row(
        "not found / error / unfinished",
        lambda ts: "/".join(
            str(sum(t.outcome == o for t in ts)) for o in ("not-found", "error", "unfinished")
        ),
    )
    row("aborted (origin left)", lambda ts: str(sum(t.outcome == "aborted" for t in ts)))
    row(
        "latency ms p50/p90/p99 (found)",
        lambda ts: spread([t.latency for t in found(ts) if t.latency is not None], 1e3),
    )
    row(
        "hops p50/p90/p99 (found)",
        lambda ts: spread([t.hops for t in found(ts) if t.hops is not None]),
    )
    row("requests p50/p90/p99 (all)", lambda ts: spread([t.requests for t in ran(ts)]))
    add("  hops: depth of the first node that answered with the value (1: one the origin")
    add("  knew; 0: the origin held it). requests: FIND_VALUE requests the lookup caused,")
    add(
        "  those lost on the way included. Skipped (no origin free): "
        + str(results.skipped_lookups)
    )


def _rate(later: Checkpoint, earlier: Checkpoint | None) -> tuple[float, float, list[float]]:
    """Datagrams, bytes and decoded events per node per minute between two checkpoints."""
    if earlier is None:
        earlier = Checkpoint(0.0, 0.0, 0, 0, [0] * len(later.events))
    minutes = (later.node_seconds - earlier.node_seconds) / 60 or math.nan
    events = [(a - b) / minutes for a, b in zip(later.events, earlier.events, strict=True)]
    return (
        (later.sent - earlier.sent) / minutes,
        (later.bytes_sent - earlier.bytes_sent) / minutes,
        events,
    )


def _traffic(results: Results, add: Any) -> None:
    checkpoints = results.checkpoints
    net = results.network
    add(f"{'traffic, per node per minute':<42}{'datagrams':>12}{'bytes':>12}")
    phases = (
        ("joins", None, "stores"),
        ("stores", "stores", "lookups"),
        ("lookups", "lookups", "end"),
        ("whole run", None, "end"),
    )
    for title, first, last in phases:
        if last not in checkpoints or (first is not None and first not in checkpoints):
            continue
        later, earlier = checkpoints[last], checkpoints[first] if first else None
        datagrams, size, _ = _rate(later, earlier)
        span = f"{earlier.time if earlier else 0:.0f}-{later.time:.0f} s"
        add(f"  {title + ' (' + span + ')':<40}{datagrams:>12,.1f}{size:>12,.0f}")
    if "lookups" in checkpoints and "end" in checkpoints:
        _, _, events = _rate(checkpoints["end"], checkpoints["lookups"])
        parts = [
            f"{kind.name}{' answer' if response else ''} {events[2 * kind + response]:.1f}"
            for kind in EventType
            for response in (0, 1)
            if events[2 * kind + response] >= 0.05
        ]
        add("  events received in the lookups phase, by type: " + ", ".join(parts[:4]))
        for start in range(4, len(parts), 5):
            add("    " + ", ".join(parts[start : start + 5]))
    add(
        f"  datagrams sent {_n(net['sent'])}: lost {_pct(net['dropped'], net['sent'])}, "
        f"to an address no node held (any more) {_pct(net['undeliverable'], net['sent'])}"
    )


def _replicas(results: Results, add: Any) -> None:
    add("replicas alive per stored value (succeeded stores):")
    add(
        f"  {'t (s)':>7}  {'holders min/p10/p50/max':>24}  "
        f"{'first holders alive p10/p50':>28}  {'values held nowhere':>19}"
    )
    for sample in results.samples:
        holders, initial = sample.holders, sample.initial
        if not holders:
            continue
        add(
            f"  {sample.time:>7.0f}  "
            f"{min(holders):>6}/{percentile(holders, 0.1):.0f}/{percentile(holders, 0.5):.0f}"
            f"/{max(holders):<8}  {'':>10}{percentile(initial, 0.1):.0f}/"
            f"{percentile(initial, 0.5):<10.0f}  {sum(h == 0 for h in holders):>19}"
        )
    add("  holders: live nodes holding the value; first holders: those that held it at")
    add("  the first count, still live (key transfer hands values to nodes that join).")


def probes_at(results: Results) -> list[tuple[float, list[Probe], list[Probe]]]:
    """The probes by count: ``(time, long-lived, short-lived)``."""
    times: dict[float, tuple[list[Probe], list[Probe]]] = {}
    for probe in results.probes:
        long, short = times.setdefault(probe.time, ([], []))
        (short if probe.short else long).append(probe)
    return [(time, long, short) for time, (long, short) in times.items()]


def _found(probes: list[Probe]) -> str:
    ran = [p for p in probes if p.outcome != "aborted"]
    found = sum(p.outcome == "found" for p in ran)
    return f"{found}/{len(ran)}" if ran else "-"


def _retention(results: Results, add: Any) -> None:
    scenario, start = results.scenario, results.timeline.stores
    samples = {sample.time: sample for sample in results.samples}
    add(
        f"retention: at each count, FirstValue Finds of {scenario.probes} random stored "
        f"values (ttl {scenario.ttl:g} s) and of each short-lived one (ttl "
        f"{scenario.short_ttl:g} s), from random joined nodes"
    )
    add(
        f"  {'t-store (h)':>11}  {'found':>9}  {'%':>7}  {'holders p10/p50':>15}  "
        f"{'held nowhere':>12}  {'short found':>11}  {'short holders max':>17}"
    )
    for time, long, short in probes_at(results):
        sample = samples.get(time)
        holders = sample.holders if sample else []
        ran = [p for p in long if p.outcome != "aborted"]
        share = 100 * sum(p.outcome == "found" for p in ran) / len(ran) if ran else math.nan
        add(
            f"  {(time - start) / 3600:>11.2f}  {_found(long):>9}  {share:>7.2f}  "
            f"{percentile(holders, 0.1):>7.0f}/{percentile(holders, 0.5):<7.0f}  "
            f"{sum(h == 0 for h in holders):>12}  {_found(short):>11}  "
            f"{max(sample.short, default=0) if sample else 0:>17}"
        )
    add("  found: Finds that returned the value / Finds whose origin stayed; short")
    add("  holders: live nodes holding a short-lived value unexpired, the most of any.")


def steady_span(results: Results) -> tuple[Checkpoint, Checkpoint] | None:
    """The counts between which traffic is steady: the first at least
    ``STEADY_AFTER`` into the lookups phase (or the first), and the last,
    if at least half an hour apart."""
    series = results.series
    if len(series) < 2:
        return None
    steady = results.timeline.lookups + STEADY_AFTER
    first = next((c for c in series if c.time >= steady), series[0])
    last = series[-1]
    if last.time - first.time < 1800 or not first.event_bytes:
        return None
    return first, last


def steady_traffic(results: Results) -> dict[str, Any] | None:
    """Per node per hour in steady state: datagrams and bytes received by
    event type (requests and answers together), and sent in all."""
    span = steady_span(results)
    if span is None:
        return None
    first, last = span
    hours = (last.node_seconds - first.node_seconds) / 3600
    by_type: dict[str, dict[str, float]] = {}
    for kind in EventType:
        datagrams = bytes_ = 0.0
        for response in (0, 1):
            slot = 2 * kind + response
            datagrams += last.event_datagrams[slot] - first.event_datagrams[slot]
            bytes_ += last.event_bytes[slot] - first.event_bytes[slot]
        if datagrams:
            by_type[kind.name] = {"datagrams": datagrams / hours, "bytes": bytes_ / hours}
    sent_bytes = (last.bytes_sent - first.bytes_sent) / hours
    return {
        "from_s": first.time,
        "to_s": last.time,
        "by_type": by_type,
        "sent_datagrams": (last.sent - first.sent) / hours,
        "sent_bytes": sent_bytes,
        "bytes_per_s": sent_bytes / 3600,
    }


def _steady(results: Results, add: Any) -> None:
    traffic = steady_traffic(results)
    assert traffic is not None
    add(
        f"traffic in steady state ({traffic['from_s']:.0f}-{traffic['to_s']:.0f} s), "
        "per node per hour, received, by event type (requests and their answers):"
    )
    add(f"  {'type':<12}{'datagrams':>12}{'bytes':>14}")
    for name, row in traffic["by_type"].items():
        add(f"  {name:<12}{row['datagrams']:>12,.1f}{row['bytes']:>14,.0f}")
    add(
        f"  sent in all: {traffic['sent_datagrams']:,.1f} datagrams, "
        f"{traffic['sent_bytes']:,.0f} bytes per node per hour = "
        f"{traffic['bytes_per_s']:,.1f} bytes/s per node (lost ones included)"
    )


def to_json(results: Results, *, timing: dict[str, float] | None = None) -> dict[str, Any]:
    """The raw figures, for plots."""
    return {
        "scenario": dataclasses.asdict(results.scenario),
        "timeline": dataclasses.asdict(results.timeline),
        "population": results.population,
        "network": results.network,
        "events_processed": results.events_processed,
        "skipped_lookups": results.skipped_lookups,
        "pair_rtts_s": results.pair_rtts,
        "lookups": [
            {
                "mode": t.mode,
                "outcome": t.outcome,
                "start_s": t.start,
                "latency_s": t.latency,
                "hops": t.hops,
                "requests": t.requests,
            }
            for t in results.traces
        ],
        "stores": [
            {"outcome": s.outcome, "start_s": s.start, "end_s": s.end} for s in results.stores
        ],
        "replicas": [
            {
                "time_s": s.time,
                "holders": s.holders,
                "first_holders_alive": s.initial,
                "short_holders": s.short,
            }
            for s in results.samples
        ],
        "short_stores": [
            {"outcome": s.outcome, "start_s": s.start, "end_s": s.end} for s in results.short_stores
        ],
        "probes": [
            {
                "time_s": p.time,
                "short": p.short,
                "index": p.index,
                "outcome": p.outcome,
                "latency_s": None if p.end is None else p.end - p.start,
            }
            for p in results.probes
        ],
        "series": [dataclasses.asdict(c) for c in results.series],
        "steady_traffic": steady_traffic(results),
        "checkpoints": {
            name: dataclasses.asdict(checkpoint) for name, checkpoint in results.checkpoints.items()
        },
        "event_types": {int(kind): kind.name for kind in EventType},
        "counters": results.counters,
        "timing": timing,
    }
