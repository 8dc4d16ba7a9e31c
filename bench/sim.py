"""``python -m bench.sim``: the simulator's scenarios, ``bench/results/SIM.md``
and its plots, from one run.

Each scenario is one ``python -m dht.sim`` process (its text report and raw
JSON kept under ``bench/results/sim/``), ``--jobs`` at a time. The page
gives, per scenario, lookup success, latency against the pair round trip,
hops, requests, traffic and replicas, beside published figures of deployed
DHTs, with a latency CDF and replicas over time per network size. Timing
targets live here and in the page, never in the tests.

``--living`` runs instead the living-network scenarios (``LIVING``),
``--jobs`` at a time: retention over a day with maintenance on and off, the slow-nodes
latency with and without latency-aware routing, and maintenance traffic
with 1,000 values held per node. It rewrites only the page's section
between ``LIVING_BEGIN`` and ``LIVING_END`` (appended if missing), so the
grid's figures stay as their run left them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
RAW = RESULTS / "sim"
LOSSES = (0.0, 0.05, 0.10)
CHURNS = ("none", "1h", "10m")
TARGET = (0.05, "1h")
"""The issue's target scenario: 5 % loss, 1 h median session."""


LARGE = ((0.0, "none"), TARGET, (0.10, "10m"))
"""Scenarios of the sizes too large for every combination in one sitting:
the calmest, the target and the harshest."""


LIVING_BEGIN = "<!-- living network: written by python -m bench.sim --living -->"
LIVING_END = "<!-- living network: end -->"


def living(
    retention_nodes: int, hours: float, slow_nodes: int, traffic_nodes: int
) -> dict[str, list[str]]:
    """The living-network scenarios: name -> ``python -m dht.sim`` arguments."""
    common = ["--loss=0.05", "--churn=1h"]
    retention = [
        *common,
        f"--nodes={retention_nodes}",
        "--stores=1000",
        "--ttl=48h",
        "--short-stores=20",
        "--short-ttl=1h",
        "--probes=100",
        "--lookups=500",
        f"--duration={hours:g}h",
        "--sample-interval=30m",
    ]
    slow = [
        *common,
        f"--nodes={slow_nodes}",
        "--slow-fraction=0.1",
        "--slow-factor=10",
        "--stores=1000",
        "--lookups=4000",
        "--duration=10m",
    ]
    # 1,000 values held per node: nodes * 1000 / K values, each published
    # once; 2 h, so that 1-2 h (steady) holds one republish of each value
    # (the settle keeps the second one, 60 s late at most, inside it).
    traffic = [
        *common,
        f"--nodes={traffic_nodes}",
        f"--stores={traffic_nodes * 1000 // 20}",
        "--value-size=100",
        "--store-time=5m",
        "--settle=2m",
        "--lookups=200",
        "--duration=2h",
        "--sample-interval=30m",
    ]
    return {
        "living-slow-aware": slow,
        "living-slow-unaware": [*slow, "--no-latency-aware"],
        "living-traffic-1000-values": traffic,
        "living-retention-on": retention,
        "living-retention-off": [*retention, "--no-maintenance"],
    }


def run_sim(name: str, args: list[str], seed: int) -> dict[str, Any]:
    """Run ``python -m dht.sim`` with ``args``; keep its report and JSON as
    ``name`` under ``RAW``; its figures, with the command that made them."""
    raw = RAW / f"{name}.json"
    command = [sys.executable, "-m", "dht.sim", *args, f"--seed={seed}", f"--json={raw}", "--quiet"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{name} failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    (RAW / f"{name}.txt").write_text(done.stdout)
    print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
    figures: dict[str, Any] = json.loads(raw.read_text())
    figures["command"] = "python -m dht.sim " + " ".join([*args, f"--seed={seed}"])
    return figures


def retention_series(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """Per count: hours since the stores, share of probes found (long and
    short ttl), replicas median and p10."""
    start = figures["timeline"]["stores"]
    holders = {s["time_s"]: s for s in figures["replicas"]}
    by_time: dict[float, list[dict[str, Any]]] = {}
    for probe in figures["probes"]:
        by_time.setdefault(probe["time_s"], []).append(probe)
    out = []
    for time_s, probes in sorted(by_time.items()):
        row: dict[str, Any] = {"hours": (time_s - start) / 3600}
        for short in (False, True):
            ran = [p for p in probes if p["short"] == short and p["outcome"] != "aborted"]
            found = sum(p["outcome"] == "found" for p in ran)
            row["short" if short else "long"] = (found, len(ran))
        sample = holders[time_s]
        row["p50"] = statistics.median(sample["holders"])
        row["p10"] = _pct(sample["holders"], 0.1)
        row["nowhere"] = sum(h == 0 for h in sample["holders"])
        row["short_holders"] = max(sample["short_holders"], default=0)
        out.append(row)
    return out


def scenarios(sizes: list[int], full_grid_below: int) -> list[tuple[int, float, str]]:
    """Every loss and churn for sizes under ``full_grid_below``; for larger
    ones, ``LARGE``. Largest first: the longest runs start first."""
    out = []
    for nodes in sorted(sizes, reverse=True):
        if nodes < full_grid_below:
            out += [(nodes, loss, churn) for loss in LOSSES for churn in CHURNS]
        else:
            out += [(nodes, loss, churn) for loss, churn in LARGE]
    return out


def name_of(nodes: int, loss: float, churn: str) -> str:
    return f"n{nodes}-loss{round(loss * 100)}-churn{churn}"


def run(nodes: int, loss: float, churn: str, seed: int, extra: list[str]) -> dict[str, Any]:
    args = [f"--nodes={nodes}", f"--loss={loss}", f"--churn={churn}", *extra]
    return run_sim(name_of(nodes, loss, churn), args, seed)


def _pct(values: list[float], q: float) -> float:
    """The ``q``-quantile by nearest rank (as ``dht.sim.report``)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summary(figures: dict[str, Any]) -> dict[str, Any]:
    """The page's figures of one run."""
    scenario = figures["scenario"]
    rtt = statistics.median(figures["pair_rtts_s"])
    out: dict[str, Any] = {
        "nodes": scenario["nodes"],
        "loss": scenario["loss"],
        "churn": scenario["churn"],
        "rtt_ms": rtt * 1000,
        "wall_s": (figures.get("timing") or {}).get("wall_s", float("nan")),
        "rss_mb": (figures.get("timing") or {}).get("maxrss_mb", float("nan")),
    }
    for mode in ("first-value", "closest"):
        lookups = [t for t in figures["lookups"] if t["mode"] == mode]
        found = [t for t in lookups if t["outcome"] == "found"]
        latencies = [t["latency_s"] * 1000 for t in found]
        out[mode] = {
            "count": len(lookups),
            "success": 100 * len(found) / len(lookups) if lookups else float("nan"),
            "latency_ms": [_pct(latencies, q) for q in (0.5, 0.9, 0.99)],
            "hops": [_pct([t["hops"] for t in found], q) for q in (0.5, 0.9, 0.99)],
            "requests": [_pct([t["requests"] for t in found], q) for q in (0.5, 0.9, 0.99)],
            "cdf": sorted(latencies),
        }
    stores = figures["stores"]
    out["store_ok"] = 100 * sum(s["outcome"] == "ok" for s in stores) / max(1, len(stores))
    out["replicas"] = [
        (sample["time_s"], statistics.median(sample["holders"]), _pct(sample["holders"], 0.1))
        for sample in figures["replicas"]
        if sample["holders"]
    ]
    lookups = figures["checkpoints"].get("lookups")
    if lookups and lookups.get("node_seconds"):
        per_minute = 60 / lookups["node_seconds"]
        out["datagrams_per_node_min"] = lookups["sent"] * per_minute
        out["kb_per_node_min"] = lookups["bytes_sent"] * per_minute / 1024
    return out


PUBLISHED_FIGURES = (
    (
        "Mainline DHT (BitTorrent), after Jimenez et al.'s fixes",
        "median lookup 100-200 ms, under 1 s consistently",
        'R. Jimenez, F. Osmani, B. Knutsson, "Sub-second lookups on a large-scale '
        'Kademlia-based overlay", IEEE P2P 2011',
    ),
    (
        "IPFS (libp2p Kademlia)",
        "80 % of retrievals under 500 ms in Europe",
        'D. Trautwein et al., "Design and evaluation of IPFS", ACM SIGCOMM 2022',
    ),
    (
        "Kad (eMule)",
        "lookups found only 18 % of a key's replicas",
        'H. J. Kang et al., "Why Kad lookup fails", IEEE P2P 2009',
    ),
)
PUBLISHED = "\n".join(
    [
        "## Published figures of deployed DHTs",
        "",
        "| system | figure | source |",
        "|---|---|---|",
        *(f"| {system} | {figure} | {source} |" for system, figure, source in PUBLISHED_FIGURES),
        "",
        "These measure real networks (real round trips, NATs, misbehaving clients),",
        "ours a model of one: the comparison says whether the library's lookups are",
        "in the same class, not that it would match them on the internet. Kad's",
        "figure is the share of replicas a lookup reached; a K-closest Find here asks",
        "the K closest nodes, where the replicas were placed.",
        "",
    ]
)


def _ms(values: list[float]) -> str:
    return " / ".join(f"{v:.0f}" for v in values)


def _counts(values: list[float]) -> str:
    return " / ".join(f"{v:g}" for v in values)


def page(rows: list[dict[str, Any]], machine: dict[str, Any], plots: list[str]) -> str:
    out = [
        "# Simulated networks",
        "",
        f"One run of `python -m bench.sim` on {machine['cores']} cores, Python "
        f"{machine['python']}, {machine['platform']}, {machine['when']}, revision "
        f"{machine['revision']}. Every scenario is `python -m dht.sim` with seed "
        f"{machine['seed']}; its text report is in `sim/` (its raw figures, written "
        "there as JSON, stay out of the repository: 20 MB). Every "
        "simulated node runs the library's own core (routing table, lookups, store, "
        "request handling, key transfer, maintenance) behind the same datagram door "
        "as the listener threads, each at its own address, over a virtual clock and "
        "an in-memory network: per-pair round trips from a log-normal model (20-300 ms "
        "body), per-datagram loss, churn with exponential session lengths of the given "
        "median (a node leaves without a word and a new one joins).",
        "",
        "Latency is virtual time from a lookup's start to its first value "
        "(FirstValue) or to its end (K-closest); hops are the depth of the request "
        "chain that reached the value; percentiles p50 / p90 / p99. Success: the "
        "Find returned the stored value.",
        "",
        "| nodes | loss | churn | RTT p50 ms | FirstValue ok % | FV ms | FV / RTT | "
        "FV hops | FV requests | K-closest ok % | KC ms | KC requests | store ok % | "
        "datagrams / node / min | KB / node / min | replicas p50 (p10) at end | wall s | "
        "peak MB |",
        "|" + "---|" * 18,
    ]
    for row in rows:
        fv, kc = row["first-value"], row["closest"]
        replicas = row["replicas"][-1] if row["replicas"] else (0, float("nan"), float("nan"))
        out.append(
            f"| {row['nodes']:,} | {row['loss'] * 100:g} % | {row['churn_label']} "
            f"| {row['rtt_ms']:.0f} | {fv['success']:.2f} | {_ms(fv['latency_ms'])} "
            f"| {fv['latency_ms'][0] / row['rtt_ms']:.2f} | {_counts(fv['hops'])} "
            f"| {_counts(fv['requests'])} | {kc['success']:.2f} | {_ms(kc['latency_ms'])} "
            f"| {_counts(kc['requests'])} | {row['store_ok']:.1f} "
            f"| {row.get('datagrams_per_node_min', float('nan')):.0f} "
            f"| {row.get('kb_per_node_min', float('nan')):.1f} "
            f"| {replicas[1]:g} ({replicas[2]:g}) | {row['wall_s']:.0f} | {row['rss_mb']:.0f} |"
        )
    out += ["", *[f"![{name}]({name})" for name in plots], "", PUBLISHED]
    return "\n".join(out) + "\n"


def plot(rows: list[dict[str, Any]], sizes: list[int]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for nodes in sizes:
        group = [row for row in rows if row["nodes"] == nodes]
        figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for row in group:
            for axis, mode in zip(axes, ("first-value", "closest"), strict=True):
                cdf = row[mode]["cdf"]
                if cdf:
                    ys = [(i + 1) / row[mode]["count"] for i in range(len(cdf))]
                    axis.plot(cdf, ys, label=row["label"])
        for axis, title in zip(axes, ("FirstValue", "K-closest"), strict=True):
            axis.set_xscale("log")
            axis.set_xlabel("lookup latency, simulated ms")
            axis.set_ylabel("share of lookups")
            axis.set_title(f"{title} Find, {nodes:,} nodes")
            axis.grid(True, alpha=0.3)
        axes[0].legend(fontsize=7)
        figure.tight_layout()
        name = f"sim-latency-{nodes}.png"
        figure.savefig(RESULTS / name, dpi=90)
        plt.close(figure)
        names.append(name)

        figure, axis = plt.subplots(figsize=(7, 4.5))
        for row in group:
            if row["replicas"]:
                times = [t / 60 for t, _, _ in row["replicas"]]
                axis.plot(times, [m for _, m, _ in row["replicas"]], label=row["label"])
        axis.set_xlabel("simulated minutes")
        axis.set_ylabel("live replicas per value (median)")
        axis.set_ylim(0, 24)
        axis.set_title(f"Replicas alive, {nodes:,} nodes")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
        figure.tight_layout()
        name = f"sim-replicas-{nodes}.png"
        figure.savefig(RESULTS / name, dpi=90)
        plt.close(figure)
        names.append(name)
    return names


def _share(found_ran: tuple[int, int]) -> str:
    found, ran = found_ran
    return f"{100 * found / ran:.1f} % ({found}/{ran})" if ran else "-"


def _fv(figures: dict[str, Any]) -> dict[str, Any]:
    return summary(figures)["first-value"]


def living_page(runs: dict[str, dict[str, Any]], machine: dict[str, Any], plots: list[str]) -> str:
    on, off = runs["living-retention-on"], runs["living-retention-off"]
    aware, unaware = runs["living-slow-aware"], runs["living-slow-unaware"]
    heavy = runs["living-traffic-1000-values"]
    series_on, series_off = retention_series(on), retention_series(off)
    hours = on["scenario"]["duration"] / 3600
    out = [
        LIVING_BEGIN,
        "## The living network (maintenance and latency-aware routing)",
        "",
        f"One run of `python -m bench.sim --living` on {machine['cores']} cores (shared "
        f"with other work), Python {machine['python']}, {machine['platform']}, "
        f"{machine['when']}, revision {machine['revision']}, seed {machine['seed']}, "
        f"{machine['jobs']} simulation(s) at a time. Text reports: `sim/living-*.txt`. "
        "Each run, its command and its wall time:",
        "",
        "| run | command | wall s | wall s per simulated hour | peak MB |",
        "|---|---|---|---|---|",
    ]
    for name, figures in runs.items():
        timing = figures.get("timing") or {}
        span = (figures["checkpoints"]["end"]["time"]) / 3600
        out.append(
            f"| {name} | `{figures['command']}` | {timing.get('wall_s', float('nan')):.0f} "
            f"| {timing.get('wall_s', float('nan')) / span:.0f} "
            f"| {timing.get('maxrss_mb', float('nan')):.0f} |"
        )
    out += [
        "",
        f"### Retention over {hours:g} h: {on['scenario']['nodes']:,} nodes, 5 % loss, "
        "1 h median sessions",
        "",
        "1,000 values stored right after the joins with a 48 h ttl, and 20 with a 1 h ttl; "
        "every 30 simulated minutes, FirstValue Finds of 100 random values (and of each "
        "1 h value) from random joined nodes, and a count of the live nodes holding each "
        "value. Maintenance off: bucket refresh, republishing and replication never run "
        "(their intervals at 1e9 s, and each Store's republishing stopped by "
        "`stop_republishing`, since a value is also republished at half its remaining "
        "life); liveness pings and key transfer to newcomers still run.",
        "",
        "| hours after the stores | found, maintenance on | found, off | replicas p50 / p10, "
        "on | replicas p50 / p10, off | values held nowhere, on / off | 1 h values found "
        "(on) | most live holders of a 1 h value (on) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a, b in zip(series_on, series_off, strict=False):
        if round(a["hours"] * 2) % 4 and a is not series_on[-1] and a["hours"] > 2.6:
            continue  # every 2 h past the first hours
        out.append(
            f"| {a['hours']:.1f} | {_share(a['long'])} | {_share(b['long'])} "
            f"| {a['p50']:g} / {a['p10']:g} | {b['p50']:g} / {b['p10']:g} "
            f"| {a['nowhere']} / {b['nowhere']} | {_share(a['short'])} | {a['short_holders']} |"
        )
    late = [row for row in series_on if row["hours"] >= 2.0]
    found_late = sum(row["short"][0] for row in late)
    ran_late = sum(row["short"][1] for row in late)
    found_all = [sum(r["long"][0] for r in series) for series in (series_on, series_off)]
    ran_all = [sum(r["long"][1] for r in series) for series in (series_on, series_off)]
    out += [
        "",
        f"Over the whole run, the probes found {_share((found_all[0], ran_all[0]))} of the "
        f"values with maintenance and {_share((found_all[1], ran_all[1]))} without. "
        f"The 1 h-ttl values, from 1 h + one refresh_interval (2 h) on: found by "
        f"{found_late} of {ran_late} Finds.",
        "",
    ]
    fa, fu = _fv(aware), _fv(unaware)
    ka, ku = summary(aware)["closest"], summary(unaware)["closest"]
    gain = 100 * (1 - fa["latency_ms"][0] / fu["latency_ms"][0])
    out += [
        f"### Slow nodes: {aware['scenario']['nodes']:,} nodes, 10 % of them at 10x, "
        "5 % loss, 1 h median sessions",
        "",
        "A pair with a slow node (or two) takes ten times its log-normal round trip. "
        "10 minutes of lookups after the joins and stores, half FirstValue, half K-closest; "
        "the same seed, so the same nodes, values, lookups and slow nodes, with and "
        "without latency-aware routing.",
        "",
        "| routing | FirstValue ok % | FV ms p50 / p90 / p99 | FV requests | K-closest ok % "
        "| KC ms p50 / p90 / p99 |",
        "|---|---|---|---|---|---|",
        f"| latency-aware | {fa['success']:.2f} | {_ms(fa['latency_ms'])} "
        f"| {_counts(fa['requests'])} | {ka['success']:.2f} | {_ms(ka['latency_ms'])} |",
        f"| unaware | {fu['success']:.2f} | {_ms(fu['latency_ms'])} "
        f"| {_counts(fu['requests'])} | {ku['success']:.2f} | {_ms(ku['latency_ms'])} |",
        "",
        f"Median FirstValue latency {gain:.0f} % lower with latency-aware routing.",
        "",
        "### Maintenance traffic per node",
        "",
        "Steady state: from 1 h after the lookups began to the end, per node per hour, "
        "events received by type (requests and their answers together; datagrams and "
        "bytes, framing included), and all datagrams sent (lost ones included).",
        "",
    ]
    traffic_runs = (
        (f"retention, {on['scenario']['nodes']:,} nodes, ~20 values held per node", on),
        (
            f"{heavy['scenario']['nodes']:,} nodes, ~1,000 values of 100 bytes held per node "
            "(each node published ~50)",
            heavy,
        ),
    )
    types = ("PING", "PONG", "FIND_NODE", "STORE", "FIND_VALUE")
    out += [
        "| run | "
        + " | ".join(f"{t} datagrams / bytes" for t in types)
        + " | sent datagrams / h | sent KB / h | bytes / s |",
        "|---|" + "---|" * (len(types) + 3),
    ]
    for label, figures in traffic_runs:
        steady = figures.get("steady_traffic")
        if not steady:
            continue
        cells = [
            f"{steady['by_type'].get(t, {}).get('datagrams', 0):,.0f} / "
            f"{steady['by_type'].get(t, {}).get('bytes', 0):,.0f}"
            for t in types
        ]
        out.append(
            f"| {label} | "
            + " | ".join(cells)
            + f" | {steady['sent_datagrams']:,.0f} | {steady['sent_bytes'] / 1024:,.0f} "
            f"| {steady['bytes_per_s']:,.0f} |"
        )
    out += ["", *[f"![{name}]({name})" for name in plots], "", LIVING_END]
    return "\n".join(out) + "\n"


def living_plots(runs: dict[str, dict[str, Any]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    on = retention_series(runs["living-retention-on"])
    off = retention_series(runs["living-retention-off"])
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for series, label in ((on, "maintenance on"), (off, "maintenance off")):
        xs = [row["hours"] for row in series]
        axes[0].plot(xs, [100 * r["long"][0] / max(1, r["long"][1]) for r in series], label=label)
        line = axes[1].plot(xs, [r["p50"] for r in series], label=f"{label}, median")[0]
        axes[1].plot(
            xs, [r["p10"] for r in series], "--", color=line.get_color(), label=f"{label}, p10"
        )
    axes[0].plot(
        [row["hours"] for row in on],
        [100 * r["short"][0] / max(1, r["short"][1]) for r in on],
        ":",
        label="1 h-ttl values, maintenance on",
    )
    axes[0].set_ylabel("values found by a FirstValue Find, %")
    axes[0].set_ylim(-2, 102)
    axes[1].set_ylabel("live replicas per value")
    axes[1].axhline(10, color="grey", linewidth=0.8)
    for axis in axes:
        axis.set_xlabel("simulated hours after the stores")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    nodes = runs["living-retention-on"]["scenario"]["nodes"]
    figure.suptitle(f"Retention, {nodes:,} nodes, 5 % loss, 1 h median sessions")
    figure.tight_layout()
    names = ["sim-retention.png"]
    figure.savefig(RESULTS / names[0], dpi=90)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, label in (("living-slow-aware", "latency-aware"), ("living-slow-unaware", "unaware")):
        fv = _fv(runs[name])
        cdf = fv["cdf"]
        axis.plot(cdf, [(i + 1) / fv["count"] for i in range(len(cdf))], label=label)
    axis.set_xscale("log")
    axis.set_xlabel("FirstValue latency, simulated ms")
    axis.set_ylabel("share of lookups")
    nodes = runs["living-slow-aware"]["scenario"]["nodes"]
    axis.set_title(f"FirstValue, {nodes:,} nodes, 10 % of them 10x slower")
    axis.grid(True, alpha=0.3)
    axis.legend()
    figure.tight_layout()
    names.append("sim-slow-latency.png")
    figure.savefig(RESULTS / names[-1], dpi=90)
    plt.close(figure)
    return names


def write_living(section: str) -> None:
    """Replace the living section of SIM.md (or append it)."""
    path = RESULTS / "SIM.md"
    text = path.read_text() if path.exists() else ""
    if LIVING_BEGIN in text and LIVING_END in text:
        head, rest = text.split(LIVING_BEGIN, 1)
        tail = rest.split(LIVING_END, 1)[1]
        text = head + section.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def machine_of(seed: int) -> dict[str, Any]:
    revision = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "revision": revision or "unknown",
        "seed": seed,
    }


def main_living(args: argparse.Namespace) -> int:
    RAW.mkdir(parents=True, exist_ok=True)
    todo = living(args.retention_nodes, args.hours, args.slow_nodes, args.traffic_nodes)
    machine = {**machine_of(args.seed), "jobs": args.jobs}
    # The longest (retention) first, ``--jobs`` at a time.
    names = sorted(todo, key=lambda name: not name.startswith("living-retention"))
    with ThreadPoolExecutor(args.jobs) as pool:
        done = dict(
            zip(names, pool.map(lambda n: run_sim(n, todo[n], args.seed), names), strict=True)
        )
    runs = {name: done[name] for name in todo}
    plots = living_plots(runs)
    write_living(living_page(runs, machine, plots))
    print(f"wrote {RESULTS / 'SIM.md'}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sim")
    parser.add_argument("--sizes", default="1000,10000", help="network sizes, comma-separated")
    parser.add_argument(
        "--full-grid-below",
        type=int,
        default=5000,
        help="sizes below run all 9 loss x churn scenarios; others 3 (LARGE)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="simulations at once")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--living", action="store_true", help="the living-network scenarios instead of the grid"
    )
    parser.add_argument("--retention-nodes", type=int, default=1000)
    parser.add_argument("--hours", type=float, default=24.0, help="retention runs' length")
    parser.add_argument("--slow-nodes", type=int, default=1000)
    parser.add_argument("--traffic-nodes", type=int, default=100)
    parser.add_argument("extra", nargs="*", help="more arguments for python -m dht.sim")
    args = parser.parse_args()
    if args.living:
        return main_living(args)
    sizes = [int(size) for size in args.sizes.split(",")]
    RAW.mkdir(parents=True, exist_ok=True)
    todo = scenarios(sizes, args.full_grid_below)

    def run_one(scenario: tuple[int, float, str]) -> dict[str, Any]:
        return run(*scenario, args.seed, args.extra)

    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(run_one, todo))
    rows = []
    for (_, loss, churn), figures in zip(todo, runs, strict=True):
        row = summary(figures)
        row["churn_label"] = {"none": "none", "1h": "1 h", "10m": "10 min"}[churn]
        row["label"] = f"loss {loss * 100:g} %, churn {row['churn_label']}"
        rows.append(row)
    machine = machine_of(args.seed)
    plots = plot(rows, sizes)
    (RESULTS / "SIM.md").write_text(page(rows, machine, plots))
    print(f"wrote {RESULTS / 'SIM.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
