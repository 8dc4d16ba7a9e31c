"""Turn the JSON lines of one invocation into a markdown report and a chart."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

Row = dict[str, Any]
OURS = ("dht", "dht-pinned")
BEFORE = ("dht-before", "dht-before-pinned")
"""An earlier revision of dht (``--baseline``): compared with ours, not a peer."""
ECHOES = ("udp-echo", "udp-echo-pinned")


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
    cluster = _group(rows, "cluster")
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
    return "\n".join(out) + "\n"


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
            for ours, before in zip(OURS, BEFORE, strict=True):
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
        ("cluster", ("find", "ops_per_s"), "cluster find ops/s"),
        ("micro", ("ops_per_s",), "micro requests/s"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4.5))
    for axis, (workload, metric, title) in zip(axes, panels, strict=True):
        groups = _group(rows, workload)
        impls = sorted({impl for impl, _ in groups if impl not in ECHOES})
        levels = sorted({c for _, c in groups})
        width = 0.8 / max(len(impls), 1)
        for i, impl in enumerate(impls):
            heights = [_median(groups.get((impl, c), []), *metric) for c in levels]
            positions = [x + i * width for x in range(len(levels))]
            axis.bar(positions, heights, width, label=impl)
        axis.set_xticks([x + width * (len(impls) - 1) / 2 for x in range(len(levels))])
        axis.set_xticklabels([f"C={c}" for c in levels])
        axis.set_title(title)
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
