"""``python -m bench``: the whole benchmark suite in one invocation.

Runs, each in a fresh process: the cluster workload (N nodes, S stores, F
finds, C in {1, 32}) and the micro workload (5,000 FIND_VALUE requests) for
dht and each installed peer, the bare UDP echo ceiling, the deployment
shapes (``bench.deploy``: one node serving load generators in other
processes; N nodes over several processes), the in-process floor of CPU per
request (``bench.causes``, where present), and the Go-shaped reference
benchmarks of dht. Appends one JSON line per (implementation, workload, C,
repetition) to bench/results/results.jsonl and writes
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
from typing import Any

from bench.drivers import dht_driver
from bench.report import chart, markdown

RESULTS = Path(__file__).resolve().parent / "results"
PEERS = {"kademlia": "kademlia", "opendht": "opendht"}  # impl -> module that must import
Row = dict[str, object]


def _run(
    module: str,
    workload: str,
    params: dict[str, object],
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
    parser.add_argument(
        "--finds-all",
        type=int,
        help="finds to the end of the lookup (dht's K-closest Find): the first this many "
        "of the F finds, cluster and network (default: all F)",
    )
    parser.add_argument("--processes", type=int, default=4, help="network shape: processes")
    parser.add_argument(
        "--network-concurrency", type=int, default=8, help="network shape: in flight per process"
    )
    parser.add_argument("--generators", type=int, default=2, help="single shape: load generators")
    parser.add_argument(
        "--single-requests",
        type=int,
        default=10000,
        help="single shape: requests per generator and in-flight level",
    )
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
        args.single_requests = 1000
    args.finds_all = args.finds if args.finds_all is None else min(args.finds_all, args.finds)
    peers = {} if args.no_peers else PEERS
    impls = ["dht"] + [name for name, mod in peers.items() if importlib.util.find_spec(mod)]
    missing = sorted(set(peers) - set(impls))
    if missing:
        print(f"peers not installed, skipped: {missing} (pip install -e '.[compare]')")
    # Our variants: defaults, every node pinned to one CPU, and (where this
    # tree's Config has it) one process-wide I/O thread.
    ours: list[tuple[str, dict[str, object]]] = [("dht", {}), ("dht-pinned", {"pin": True})]
    if dht_driver.has_shared_io():  # this tree's dht: the dht-shared variant
        ours.append(("dht-shared", {"shared": True}))
    else:
        print("dht.Config has no shared_io: the dht-shared variant is skipped")
    floor = importlib.util.find_spec("bench.causes") is not None
    if not floor:
        print("bench.causes is not in this tree: the in-process floor is skipped")
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
        "finds_all": args.finds_all,
        "network": f"N={args.nodes} nodes over {args.processes} processes, the cluster's "
        f"plan (S={args.stores}, F={args.finds}, finds to the end: the first "
        f"{args.finds_all}), at most {args.network_concurrency} in flight "
        f"per process ({args.network_concurrency * args.processes} in all).",
        "single": f"{args.generators} load generator processes, {args.single_requests} "
        "requests each per in-flight level.",
    }
    rows: list[dict[str, object]] = []
    started = time.perf_counter()

    def record(row: dict[str, object], repetition: int) -> None:
        row = {**row, "repetition": repetition, "invocation": stamp, "machine": machine}
        rows.append(row)
        with open(RESULTS / "results.jsonl", "a") as out:
            out.write(json.dumps(row) + "\n")
        brief = {k: v for k, v in row.items() if k not in ("machine", "invocation", "levels")}
        print(json.dumps(brief), flush=True)

    def timed(module: str, workload: str, params: dict[str, object], **kw: Any) -> Row:
        t0 = time.perf_counter()
        row = _run(module, workload, params, **kw)
        return {**row, "run_s": time.perf_counter() - t0}

    # (driver, name, extra params, tree): ours, the peers, an earlier revision.
    variants = [("dht", name, extra, None) for name, extra in ours[1:] + ours[:1]]
    variants += [(impl, impl, {}, None) for impl in impls if impl != "dht"]
    before: list[tuple[str, dict[str, object]]] = []
    if args.baseline:
        before = [("dht-before", {}), ("dht-before-pinned", {"pin": True})]
        variants += [("dht", name, extra, args.baseline) for name, extra in before]
    # The deployment shapes (bench/deploy.py) run our tree's coordinator; an
    # earlier revision's dht is imported from its checkout ("tree").
    tree = {"tree": os.path.abspath(args.baseline)} if args.baseline else {}
    deployed = [("dht", name, extra) for name, extra in ours]
    deployed += [("dht", name, {**extra, **tree}) for name, extra in before]
    single = deployed + [("opendht", "opendht", {})] * ("opendht" in impls)
    network = deployed + [(impl, impl, {}) for impl in ("opendht", "kademlia") if impl in impls]
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
                if cwd is None:  # an earlier revision's Params may not have it
                    cluster["finds_all"] = args.finds_all
                row = timed(module, "cluster", cluster, timeout=600, cwd=cwd)
                record({**row, "impl": name, "concurrency": c}, repetition)
                row = timed(module, "micro", {"concurrency": c, **extra}, timeout=300, cwd=cwd)
                record({**row, "impl": name, "concurrency": c}, repetition)
            for pin in (False, True):
                name = "udp-echo-pinned" if pin else "udp-echo"
                row = timed("bench.echo", "micro", {"concurrency": c, "pin": pin}, timeout=120)
                record({**row, "impl": name, "concurrency": c}, repetition)
        for impl, name, extra in single:
            shape = {
                "impl": impl,
                "generators": args.generators,
                "requests": args.single_requests,
                **extra,
            }
            row = timed("bench.deploy", "single", shape, timeout=600)
            record({**row, "impl": name, "workload": "single"}, repetition)
        for impl, name, extra in network:
            shape = {
                "impl": impl,
                "nodes": args.nodes,
                "processes": args.processes,
                "stores": args.stores,
                "finds": args.finds,
                "finds_all": args.finds_all,
                "concurrency": args.network_concurrency,
                **extra,
            }
            row = timed("bench.deploy", "network", shape, timeout=900)
            record({**row, "impl": name, "workload": "network"}, repetition)
        if floor:
            sizes = {"nodes": args.nodes, "stores": args.stores, "finds": args.finds}
            row = timed("bench.causes", "floor", sizes, timeout=600)
            record({**row, "impl": "floor", "workload": "floor"}, repetition)
    shapes = timed("bench.shapes", "json", {}, timeout=600)
    machine["shapes_s"] = shapes["run_s"]
    shape_rows = shapes.get("rows")
    for shape in shape_rows if isinstance(shape_rows, list) else []:
        record({"impl": "dht", "workload": "shapes", "concurrency": 1, **shape}, 1)
    machine["total_s"] = time.perf_counter() - started
    report = markdown(rows, machine)
    (RESULTS / "RESULTS.md").write_text(report)
    chart(rows, RESULTS / "chart.png")
    print(report)
    print(f"bench finished in {time.perf_counter() - started:.0f} s; see {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
