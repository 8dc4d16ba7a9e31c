"""``python -m bench``: the whole benchmark suite in one invocation.

Runs, each in a fresh process: the cluster workload (N nodes, S stores, F
finds, C in {1, 32}) and the micro workload (5,000 FIND_VALUE requests) for
dht and each installed peer, the bare UDP echo ceiling, and the Go-shaped
reference benchmarks of dht. Appends one JSON line per (implementation,
workload, C, repetition) to bench/results/results.jsonl and writes
bench/results/RESULTS.md and bench/results/chart.png from this invocation.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench.report import chart, markdown

RESULTS = Path(__file__).resolve().parent / "results"
PEERS = {"kademlia": "kademlia", "opendht": "opendht"}  # impl -> module that must import


def _run(
    module: str,
    workload: str,
    params: dict[str, int],
    timeout: float,
    cwd: str | None = None,
) -> dict[str, object]:
    """Run a driver in a fresh process; in ``cwd``, it imports that tree's
    ``bench`` and ``dht`` (the script's directory comes first on the path)."""
    command = [sys.executable, "-m", module, workload, json.dumps(params)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired:
        return {"workload": workload, "error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = done.stderr.strip().splitlines()[-3:]
        return {"workload": workload, "error": f"exit {done.returncode}: {' | '.join(tail)}"}
    result: dict[str, object] = json.loads(lines[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--stores", type=int, default=500)
    parser.add_argument("--finds", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="a checkout of an earlier revision (git worktree add DIR REV): its dht runs "
        "beside ours as dht-before, in this same invocation",
    )
    parser.add_argument("--no-peers", action="store_true", help="run dht alone (and --baseline)")
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.nodes, args.stores, args.finds = 1, 20, 50, 200
    peers = {} if args.no_peers else PEERS
    impls = ["dht"] + [name for name, mod in peers.items() if importlib.util.find_spec(mod)]
    missing = sorted(set(peers) - set(impls))
    if missing:
        print(f"peers not installed, skipped: {missing} (pip install -e '.[compare]')")
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    machine = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "when": stamp,
        "repeat": args.repeat,
        "cluster": f"N={args.nodes} nodes, S={args.stores} stores of 64-byte values, "
        f"F={args.finds} finds, from random nodes; seed 2026.",
    }
    rows: list[dict[str, object]] = []
    started = time.perf_counter()

    def record(row: dict[str, object], repetition: int) -> None:
        row = {**row, "repetition": repetition, "invocation": stamp, "machine": machine}
        rows.append(row)
        with open(RESULTS / "results.jsonl", "a") as out:
            out.write(json.dumps(row) + "\n")
        brief = {k: v for k, v in row.items() if k not in ("machine", "invocation")}
        print(json.dumps(brief), flush=True)

    # dht runs twice: with defaults, and with every node pinned to one CPU.
    variants = [("dht", "dht-pinned", {"pin": True}, None)]
    variants += [(impl, impl, {}, None) for impl in impls]
    if args.baseline:
        variants += [
            ("dht", "dht-before", {}, args.baseline),
            ("dht", "dht-before-pinned", {"pin": True}, args.baseline),
        ]
    for repetition in range(1, args.repeat + 1):
        for c in (1, 32):
            for impl, name, extra, cwd in variants:
                module = f"bench.drivers.{impl}_driver"
                cluster = {
                    "nodes": args.nodes,
                    "stores": args.stores,
                    "finds": args.finds,
                    "concurrency": c,
                    **extra,
                }
                row = _run(module, "cluster", cluster, timeout=600, cwd=cwd)
                record({**row, "impl": name, "concurrency": c}, repetition)
                row = _run(module, "micro", {"concurrency": c, **extra}, timeout=300, cwd=cwd)
                record({**row, "impl": name, "concurrency": c}, repetition)
            for pin in (False, True):
                name = "udp-echo-pinned" if pin else "udp-echo"
                row = _run("bench.echo", "micro", {"concurrency": c, "pin": pin}, timeout=120)
                record({**row, "impl": name, "concurrency": c}, repetition)
    shapes = _run("bench.shapes", "json", {}, timeout=600)
    shape_rows = shapes.get("rows")
    for shape in shape_rows if isinstance(shape_rows, list) else []:
        record({"impl": "dht", "workload": "shapes", "concurrency": 1, **shape}, 1)
    report = markdown(rows, machine)
    (RESULTS / "RESULTS.md").write_text(report)
    chart(rows, RESULTS / "chart.png")
    print(report)
    print(f"bench finished in {time.perf_counter() - started:.0f} s; see {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
