"""Turn the JSON lines of one invocation into a markdown report and a chart."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

Row = dict[str, Any]
OURS = ("dht", "dht-pinned", "dht-shared")
BEFORE = ("dht-before", "dht-before-pinned")
"""An earlier revision of dht (``--baseline``): compared with ours, not a peer."""
NOW_AND_BEFORE = (("dht", "dht-before"), ("dht-pinned", "dht-before-pinned"))
ECHOES = ("udp-echo", "udp-echo-pinned")
PHASES = ("store", "find", "find_all")
NAN = float("nan")


def _median(rows: list[Row], *path: str) -> float:
    values = []
    for row in rows:
        value: Any = row
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, int | float):
            values.append(float(value))
    return statistics.median(values) if values else float("nan")


def _group(rows: list[Row], workload: str) -> dict[tuple[str, int], list[Row]]:
    groups: dict[tuple[str, int], list[Row]] = defaultdict(list)
    for row in rows:
        if row.get("workload") == workload and "error" not in row:
            groups[(row["impl"], int(row["concurrency"]))].append(row)
    return groups


def markdown(rows: list[Row], machine: dict[str, Any]) -> str:
    out = [
        "# Benchmark results",
        "",
        f"One invocation of `make bench` on {machine['cores']} cores, Python "
        f"{machine['python']}, {machine['when']}. Medians of {machine['repeat']} "
        "repetitions; every implementation ran in its own fresh process in this same "
        "invocation, so only these figures may be compared with each other.",
    ]
    cluster = _group(rows, "cluster")
    out += _targets(rows, cluster)
    out += [
        "",
        "## Cluster workload",
        "",
        f"{machine['cluster']}",
        "",
        "| impl | C | join s | store ops/s | store p50/p99 ms | store ok % | store CPU s "
        "| find ops/s | find p50/p99 ms | find ok % | find CPU s | idle CPU s/s "
        "| peak RSS MB | threads |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (impl, c), group in sorted(cluster.items()):
        out.append(
            f"| {impl} | {c} | {_median(group, 'join_s'):.2f} "
            f"| {_median(group, 'store', 'ops_per_s'):.0f} "
            f"| {_median(group, 'store', 'p50_ms'):.2f} / {_median(group, 'store', 'p99_ms'):.1f} "
            f"| {_median(group, 'store', 'success_pct'):.1f} "
            f"| {_median(group, 'store', 'cpu_s'):.1f} "
            f"| {_median(group, 'find', 'ops_per_s'):.0f} "
            f"| {_median(group, 'find', 'p50_ms'):.2f} / {_median(group, 'find', 'p99_ms'):.1f} "
            f"| {_median(group, 'find', 'success_pct'):.1f} "
            f"| {_median(group, 'find', 'cpu_s'):.1f} "
            f"| {_median(group, 'idle_cpu_per_s'):.4f} "
            f"| {_median(group, 'peak_rss_mb'):.0f} | {_median(group, 'threads'):.0f} |"
        )
    out += _ratios(cluster, [("store", "ops_per_s"), ("find", "ops_per_s")])
    out += _against_before(cluster, [("store", "ops_per_s"), ("find", "ops_per_s")])
    out += _finds_to_the_end(cluster, machine)
    out += [
        "",
        "## Micro workload",
        "",
        "Two nodes; one sends the other 5,000 FIND_VALUE requests for absent keys. "
        "The ceiling is a bare Python UDP echo in two threads, the faster of "
        "`udp-echo` (threads where the OS puts them) and `udp-echo-pinned` (both "
        "on one CPU); `% of echo` is against that ceiling.",
        "",
        "| impl | C | requests/s | p50 ms | p99 ms | ok % | % of echo |",
        "|---|---|---|---|---|---|---|",
    ]
    micro = _group(rows, "micro")
    for (impl, c), group in sorted(micro.items()):
        ceiling = max(
            (_median(micro[(echo, c)], "ops_per_s") for echo in ECHOES if (echo, c) in micro),
            default=float("nan"),
        )
        rate = _median(group, "ops_per_s")
        share = 100 * rate / ceiling
        out.append(
            f"| {impl} | {c} | {rate:.0f} | {_median(group, 'p50_ms'):.3f} "
            f"| {_median(group, 'p99_ms'):.3f} | {_median(group, 'success_pct'):.1f} "
            f"| {share:.1f} |"
        )
    out += _ratios(micro, [("ops_per_s",)], exclude=ECHOES)
    out += _against_before(micro, [("ops_per_s",)])
    out += _single(rows, machine)
    out += _network(rows, machine)
    out += _floor(rows, cluster)
    shapes = [row for row in rows if row.get("workload") == "shapes"]
    if shapes:
        out += [
            "",
            "## Reference shapes (this library only)",
            "",
            "| benchmark | ns/op | ops/s |",
            "|---|---|---|",
        ]
        by_name: dict[str, list[Row]] = defaultdict(list)
        for row in shapes:
            by_name[row["benchmark"]].append(row)
        for name, group in by_name.items():
            out.append(
                f"| {name} | {_median(group, 'ns_per_op'):.0f} "
                f"| {_median(group, 'ops_per_s'):.0f} |"
            )
    out += _time_spent(rows, machine)
    return "\n".join(out) + "\n"


def _cpu_us_per_request(row: Row, phases: tuple[str, ...] = PHASES) -> float:
    """CPU of the process per request its nodes received, over ``phases``
    (rows whose phases count requests: dht's)."""
    counted = [row[p] for p in phases if isinstance(row.get(p), dict) and "requests" in row[p]]
    requests = sum(phase["requests"] for phase in counted)
    return 1e6 * sum(phase["cpu_s"] for phase in counted) / requests if requests else NAN


def _median_of(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else NAN


def _divide(a: float, b: float) -> float:
    return a / b if b else NAN


def _fmt(value: float, digits: int = 2) -> str:
    return "-" if value != value else f"{value:.{digits}f}"


def _targets(rows: list[Row], cluster: dict[tuple[str, int], list[Row]]) -> list[str]:
    """Ours against the peers and the floor, per variant; the best variant counts."""
    single = _by_impl(rows, "single")
    floors = [row for row in rows if row.get("workload") == "floor" and "error" not in row]
    floor = _median(floors, "cpu_us_per_request") if floors else NAN
    variants = [v for v in OURS if any(impl == v for impl, _ in cluster) or v in single]

    def cluster_ratio(c: int, ours: tuple[str, ...], peer: str, theirs: tuple[str, ...]):
        def ratio(variant: str) -> float:
            mine, other = cluster.get((variant, c)), cluster.get((peer, c))
            if not mine or not other:
                return NAN
            return _divide(_median(mine, *ours), _median(other, *theirs))

        return ratio

    def cpu_ratio(c: int):
        def ratio(variant: str) -> float:
            mine = cluster.get((variant, c))
            if not mine:
                return NAN
            return _divide(_median_of([_cpu_us_per_request(row) for row in mine]), floor)

        return ratio

    def single_ratio(variant: str) -> float:
        mine, other = single.get(variant), single.get("opendht")
        if not mine or not other:
            return NAN
        return _divide(_median(mine, "best_under_5ms"), _median(other, "best_under_5ms"))

    table: list[tuple[str, str, str, Any, bool]] = []  # label, C, goal, ratio(variant), higher
    for c in (1, 32):
        table += [
            (
                "cluster K-closest Find ops/s ÷ opendht get-to-the-end ops/s",
                str(c),
                "≥ 1",
                cluster_ratio(c, ("find_all", "ops_per_s"), "opendht", ("find_all", "ops_per_s")),
                True,
            ),
            (
                "cluster store ops/s ÷ opendht store ops/s",
                str(c),
                "≥ 0.5",
                cluster_ratio(c, ("store", "ops_per_s"), "opendht", ("store", "ops_per_s")),
                True,
            ),
            (
                "cluster FirstValue find ops/s ÷ kademlia find ops/s",
                str(c),
                "≥ 2",
                cluster_ratio(c, ("find", "ops_per_s"), "kademlia", ("find", "ops_per_s")),
                True,
            ),
            ("cluster CPU µs per request ÷ in-process floor", str(c), "≤ 2", cpu_ratio(c), False),
        ]
    table.insert(
        0, ("single node: requests/s at p99 < 5 ms ÷ opendht", "-", "≥ 1", single_ratio, True)
    )
    out = [
        "",
        "## Targets",
        "",
        "Issue 19's targets: ratios of medians of the repetitions, ours to the peer, "
        "for each dht variant (`dht`: defaults; `dht-pinned`: every node on one CPU; "
        "`dht-shared`: `Config(shared_io=True)`, where this revision has it). The best "
        "variant is the one that counts. Like is set against like: our K-closest "
        "`Find`, which asks the 20 closest nodes, against opendht's `get` run to the "
        "end of its search (`find_all`); our `FirstValue` against kademlia's `get`. "
        "(opendht's `find` stops its `get` at the first value.) The floor is "
        "`python -m bench.causes floor`: the same plan's Python work with no sockets "
        "or threads (CPU per request received, all phases).",
        "",
        "| target | C | goal | " + " | ".join(variants) + " | best | met |",
        "|---|---|---|" + "---|" * len(variants) + "---|---|",
    ]
    for label, c, goal, ratio, higher in table:
        values = {variant: ratio(variant) for variant in variants}
        known = {v: x for v, x in values.items() if x == x}
        if known:
            best = (max if higher else min)(known, key=lambda v: known[v])
            value = known[best]
            met = value >= float(goal.split()[-1]) if higher else value <= float(goal.split()[-1])
            verdict = f"{best} ({value:.2f})", "yes" if met else "no"
        else:
            verdict = "-", "-"
        cells = " | ".join(_fmt(values[v]) for v in variants)
        out.append(f"| {label} | {c} | {goal} | {cells} | {verdict[0]} | {verdict[1]} |")
    if floor != floor:
        out += ["", "No floor in this invocation (`bench/causes.py` absent or failed)."]
    return out


def _by_impl(rows: list[Row], workload: str) -> dict[str, list[Row]]:
    groups: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        if row.get("workload") == workload and "error" not in row:
            groups[row["impl"]].append(row)
    return groups


def _finds_to_the_end(
    cluster: dict[tuple[str, int], list[Row]], machine: dict[str, Any]
) -> list[str]:
    """The find_all phase, and requests and CPU per request where counted."""
    ends = {key: group for key, group in cluster.items() if any("find_all" in r for r in group)}
    if not ends:
        return []
    out = [
        "",
        "### Finds to the end, and CPU per request",
        "",
        f"The first {machine.get('finds_all', 'F')} of the F keys found again, to the end "
        "of the lookup: dht's plain `Find` (the 20 closest nodes asked, every value "
        "returned) and opendht's `get` left to run until its search is done. `find` "
        "(above) is dht's `FirstValue`. Requests: those the nodes received during the "
        "phase, per operation (dht counts them); CPU µs per request: the process's CPU "
        "over the phase per request received (a request and its answer, both sides).",
        "",
        "| impl | C | find_all ops/s | p50/p99 ms | ok % | CPU s | requests per store / "
        "find / find_all | CPU µs per request: store / find / find_all / all |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (impl, c), group in sorted(ends.items()):
        per_op = " / ".join(
            _fmt(_median_of([r[p]["requests"] / r[p]["ops"] for r in group if _counted(r, p)]), 1)
            for p in PHASES
        )
        per_request = " / ".join(
            _fmt(_median_of([_cpu_us_per_request(r, (p,)) for r in group]), 0) for p in PHASES
        )
        every = _fmt(_median_of([_cpu_us_per_request(r) for r in group]), 0)
        out.append(
            f"| {impl} | {c} | {_median(group, 'find_all', 'ops_per_s'):.0f} "
            f"| {_median(group, 'find_all', 'p50_ms'):.2f} / "
            f"{_median(group, 'find_all', 'p99_ms'):.1f} "
            f"| {_median(group, 'find_all', 'success_pct'):.1f} "
            f"| {_median(group, 'find_all', 'cpu_s'):.1f} | {per_op} | {per_request} / {every} |"
        )
    return out


def _counted(row: Row, phase: str) -> bool:
    value = row.get(phase)
    return isinstance(value, dict) and "requests" in value and bool(value.get("ops"))


def _single(rows: list[Row], machine: dict[str, Any]) -> list[str]:
    groups = _by_impl(rows, "single")
    if not groups:
        return []
    by_text: dict[str, list[str]] = defaultdict(list)
    for impl, group in sorted(groups.items()):
        by_text[str(group[0].get("server_limits"))].append(impl)
    limits = [f"{', '.join(impls)}: {text}" for text, impls in by_text.items()]
    out = [
        "",
        "## One node serving load generators in other processes",
        "",
        "`bench/deploy.py single`: one node alone in its own process; "
        f"{machine.get('single', '')} Each generator runs a client node bootstrapped from "
        "the server and sends it FIND_VALUE requests for absent keys (dht: one request "
        "through the client's engine; opendht: a `get` of an absent key, one GET to the "
        "server; its generators share one node id, see `bench/deploy.py`), at each "
        "in-flight level, all generators at once. requests/s: answered "
        "requests over the common wall time; latency over every request; server CPU: the "
        "server process's, per request. The generators share the machine's cores with "
        "the server, so a slow generator also lowers the figure. Request limits raised "
        "on the server for the run: " + "; ".join(limits) + ".",
        "",
        "| impl | requests/s at p99 < 5 ms | in flight per generator |",
        "|---|---|---|",
    ]
    for impl, group in sorted(groups.items()):
        level = _median_of([r["best_concurrency"] or NAN for r in group])
        out.append(f"| {impl} | {_median(group, 'best_under_5ms'):.0f} | {_fmt(level, 0)} |")
    out += [
        "",
        "| impl | in flight per generator (all) | requests/s | p50 ms | p99 ms | ok % "
        "| server CPU µs per request | GETs sent per request |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for impl, group in sorted(groups.items()):
        levels: dict[int, list[Row]] = defaultdict(list)
        for row in group:
            for level in row.get("levels", []):
                levels[int(level["concurrency"])].append(level)
        for c, runs in sorted(levels.items()):
            server = _median_of([1e6 * r["server_cpu_s"] / r["ops"] for r in runs if r["ops"]])
            out.append(
                f"| {impl} | {c} ({runs[0]['in_flight']}) | {_median(runs, 'ops_per_s'):.0f} "
                f"| {_median(runs, 'p50_ms'):.3f} | {_median(runs, 'p99_ms'):.3f} "
                f"| {_median(runs, 'success_pct'):.1f} | {_fmt(server, 0)} "
                f"| {_fmt(_median_of([r['sent'] / r['ops'] for r in runs if r.get('sent')]))} |"
            )
    return out


def _network(rows: list[Row], machine: dict[str, Any]) -> list[str]:
    groups = _by_impl(rows, "network")
    if not groups:
        return []
    out = [
        "",
        "## Nodes over several processes",
        "",
        f"`bench/deploy.py network`: {machine.get('network', '')} Node 0 (in process 0) is "
        "the bootstrap node; each operation runs in the process hosting its origin node; "
        "ops/s over the common wall time of all processes, latency over all operations, "
        "CPU, RSS and threads summed over the processes. find: FirstValue (dht), `get` "
        "stopped at the value (opendht, kademlia); find_all: to the end of the lookup "
        "(dht's K-closest `Find`, opendht's `get` run to its end). dht-pinned pins "
        "process i's nodes to CPU i mod the CPU count.",
        "",
        "| impl | join s | store ops/s | store p50/p99 ms | store ok % | find ops/s "
        "| find p50/p99 ms | find ok % | find_all ops/s | find_all p50/p99 ms | find_all ok % "
        "| CPU µs per request | peak RSS MB | threads |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for impl, group in sorted(groups.items()):
        cells = []
        for phase in PHASES:
            cells += [
                f"{_median(group, phase, 'ops_per_s'):.0f}",
                f"{_median(group, phase, 'p50_ms'):.1f} / {_median(group, phase, 'p99_ms'):.1f}",
                f"{_median(group, phase, 'success_pct'):.1f}",
            ]
        cpu = _median_of([_cpu_us_per_request(r) for r in group])
        out.append(
            f"| {impl} | {_median(group, 'join_s'):.2f} | "
            + " | ".join(c.replace("nan", "-") for c in cells)
            + f" | {_fmt(cpu, 0)} | {_median(group, 'peak_rss_mb'):.0f} "
            f"| {_median(group, 'threads'):.0f} |"
        )
    pairs = [
        ("store", "opendht", "store"),
        ("find_all", "opendht", "find_all"),
        ("find", "kademlia", "find"),
    ]
    lines = []
    for variant in OURS + BEFORE:
        if variant not in groups:
            continue
        for ours, peer, theirs in pairs:
            if peer in groups:
                ratio = _divide(
                    _median(groups[variant], ours, "ops_per_s"),
                    _median(groups[peer], theirs, "ops_per_s"),
                )
                lines.append(f"- {variant} {ours} ops/s ÷ {peer} {theirs}: {_fmt(ratio)}")
    if lines:
        out += ["", "Ratios (> 1.00: dht is faster):", "", *lines]
    return out


def _floor(rows: list[Row], cluster: dict[tuple[str, int], list[Row]]) -> list[str]:
    floors = [row for row in rows if row.get("workload") == "floor" and "error" not in row]
    if not floors:
        return []
    out = [
        "",
        "## CPU per request against the in-process floor",
        "",
        "The floor (`python -m bench.causes floor`): the cluster's plan on simulated "
        "nodes (`dht.sim`: every datagram encoded and decoded, no sockets, no threads), "
        "CPU per request received. dht's cluster runs: the process's CPU per request its "
        "nodes received (a request and its answer), per phase and over all of them.",
        "",
        "| impl | C | store | find | find_all | all | ÷ floor |",
        "|---|---|---|---|---|---|---|",
    ]
    floor_all = _median(floors, "cpu_us_per_request")
    per_phase = [
        _fmt(_median(floors, "phases", phase, "cpu_us_per_request"), 0) for phase in PHASES
    ]
    out.append(f"| floor | - | {' | '.join(per_phase)} | {floor_all:.0f} | 1.00 |")
    for (impl, c), group in sorted(cluster.items()):
        every = _median_of([_cpu_us_per_request(r) for r in group])
        if every != every:
            continue
        phases = [
            _fmt(_median_of([_cpu_us_per_request(r, (p,)) for r in group]), 0) for p in PHASES
        ]
        out.append(
            f"| {impl} | {c} | {' | '.join(phases)} | {every:.0f} "
            f"| {_fmt(_divide(every, floor_all))} |"
        )
    return out


def _time_spent(rows: list[Row], machine: dict[str, Any]) -> list[str]:
    """Wall time of each piece (each run's process, start to end)."""
    spent: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in rows:
        if isinstance(row.get("run_s"), int | float):
            spent[(str(row.get("workload")), str(row.get("impl")))].append(row["run_s"])
    if not spent:
        return []
    out = [
        "",
        "## Time spent",
        "",
        "Wall time of each run's processes (seconds), in this invocation.",
        "",
        "| workload | impl | runs | median s | total s |",
        "|---|---|---|---|---|",
    ]
    for (workload, impl), times in sorted(spent.items()):
        out.append(
            f"| {workload} | {impl} | {len(times)} | {statistics.median(times):.1f} "
            f"| {sum(times):.0f} |"
        )
    if isinstance(machine.get("shapes_s"), int | float):
        out += ["", f"The reference shapes took {machine['shapes_s']:.0f} s."]
    if isinstance(machine.get("total_s"), int | float):
        out += ["", f"The whole invocation took {machine['total_s']:.0f} s (the install aside)."]
    return out


def _ratios(
    groups: dict[tuple[str, int], list[Row]],
    metrics: list[tuple[str, ...]],
    exclude: tuple[str, ...] = (),
) -> list[str]:
    """Ours (defaults, and pinned to one CPU) against the best peer, per
    concurrency and metric."""
    lines = ["", "Ratio of dht to the best peer (> 1.00: dht is faster):", ""]
    for c in sorted({c for _, c in groups}):
        for metric in metrics:
            peers = [
                (impl, _median(group, *metric))
                for (impl, cc), group in groups.items()
                if cc == c and impl not in OURS + BEFORE and impl not in exclude
            ]
            if not peers:
                continue
            best_impl, best = max(peers, key=lambda item: item[1])
            for name in OURS:
                ours = groups.get((name, c))
                if not ours:
                    continue
                ratio = _median(ours, *metric) / best if best else float("nan")
                lines.append(
                    f"- C={c} {'.'.join(metric)}, {name}: {ratio:.2f} (best peer: {best_impl})"
                )
    return lines


def _against_before(
    groups: dict[tuple[str, int], list[Row]], metrics: list[tuple[str, ...]]
) -> list[str]:
    """Ours against the earlier revision (``--baseline``), like for like."""
    lines = ["", "Ratio of dht to the earlier revision (> 1.00: now faster):", ""]
    for c in sorted({c for _, c in groups}):
        for metric in metrics:
            for ours, before in NOW_AND_BEFORE:
                now, then = groups.get((ours, c)), groups.get((before, c))
                if not now or not then:
                    continue
                base = _median(then, *metric)
                ratio = _median(now, *metric) / base if base else float("nan")
                lines.append(f"- C={c} {'.'.join(metric)}, {ours}: {ratio:.2f}")
    return lines if len(lines) > 3 else []


def chart(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("cluster", ("store", "ops_per_s"), "cluster store ops/s"),
        ("cluster", ("find", "ops_per_s"), "cluster find (first value) ops/s"),
        ("cluster", ("find_all", "ops_per_s"), "cluster find to the end ops/s"),
        ("micro", ("ops_per_s",), "micro requests/s"),
    ]
    drawn = {str(row.get("impl")) for row in rows if row.get("workload") in ("cluster", "micro")}
    everyone = sorted(drawn - set(ECHOES))
    colour = {impl: f"C{i % 10}" for i, impl in enumerate(everyone)}  # the same in every panel
    fig, axes = plt.subplots(1, len(panels), figsize=(20, 4.5))
    for axis, (workload, metric, title) in zip(axes, panels, strict=True):
        groups = _group(rows, workload)
        impls = sorted(
            {
                impl
                for (impl, c), group in groups.items()
                if impl not in ECHOES and _median(group, *metric) == _median(group, *metric)
            }
        )
        levels = sorted({c for _, c in groups})
        width = 0.8 / max(len(impls), 1)
        for i, impl in enumerate(impls):
            heights = [_median(groups.get((impl, c), []), *metric) for c in levels]
            positions = [x + i * width for x in range(len(levels))]
            axis.bar(positions, heights, width, label=impl, color=colour.get(impl))
        axis.set_xticks([x + width * (len(impls) - 1) / 2 for x in range(len(levels))])
        axis.set_xticklabels([f"C={c}" for c in levels])
        axis.set_title(title)
        if impls:
            axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
