#!/usr/bin/env python3
"""Multi-core benchmark: c-examples/multi_loop with 1 loop vs 2 loops (EP_REUSEPORT).

Load: bench/loadgen.c in echo mode (ping-pong: each of --conns connections sends a --size byte
message, waits for all of it to come back, checks it, sends the next). Rounds alternate the order
of the configurations (1,2 then 2,1 ...) so a drift in machine load does not favour one; the
report gives medians over rounds. The load generator runs on the same machine and competes with
the server for the cores, so alongside throughput the report gives the server's CPU time per
operation (utime+stime of the server process over the measured window, from /proc/PID/stat).

usage: bench/multicore/run.py [--rounds 3] [--duration 10] [--conns 100] [--size 64]
                              [--loops 1,2] [--loadgens 1] [--out DIR]
Writes DIR/results.json (every run) and DIR/results.md (the table); DIR defaults to
bench/multicore/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "target" / "bench-multicore"
SERVER = ROOT / "c-examples" / "build" / "multi_loop"
LOADGEN = BUILD / "loadgen"


def build() -> None:
    """Builds the library and examples (make) and the load generator (cc)."""
    subprocess.run(["make", "-s", "-C", str(ROOT), "examples"], check=True, timeout=900)
    BUILD.mkdir(parents=True, exist_ok=True)
    src = ROOT / "bench" / "loadgen.c"
    if not LOADGEN.exists() or LOADGEN.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(
            [os.environ.get("CC", "cc"), "-O2", "-std=gnu11", "-Wall", "-o", str(LOADGEN), str(src)],
            check=True,
            timeout=120,
        )


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def start_server(loops: int) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [str(SERVER), "0", "-q", "--threads", str(loops)],
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 10
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("listening "):
            return proc, int(line.split()[1])
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"multi_loop did not start (last line {line!r})")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        rc = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RuntimeError("multi_loop did not stop on SIGINT")
    if rc != 0:
        raise RuntimeError(f"multi_loop exited {rc}")


def one_run(loops: int, args: argparse.Namespace) -> dict:
    proc, port = start_server(loops)
    try:
        before = loadavg()
        per_gen = [args.conns // args.loadgens + (i < args.conns % args.loadgens) for i in range(args.loadgens)]
        gens = [
            subprocess.Popen(
                [
                    str(LOADGEN), "echo", "--port", str(port), "--conns", str(n), "--size", str(args.size),
                    "--duration", str(args.duration), "--warmup", "1", "--pid", str(proc.pid),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for n in per_gen
        ]
        results = []
        for g in gens:
            out, _ = g.communicate(timeout=args.duration + 90)
            if g.returncode != 0:
                raise RuntimeError(f"loadgen exited {g.returncode}")
            results.append(json.loads(out))
    finally:
        stop_server(proc)
    ops = sum(r["ops"] for r in results)
    secs = statistics.mean(r["duration_s"] for r in results)
    # Every generator samples the same server over (nearly) the same window: take the mean.
    server_cpu = statistics.mean(r["server_cpu_s"] for r in results)
    return {
        "loops": loops,
        "loadgens": args.loadgens,
        "ops": ops,
        "ops_per_s": ops / secs,
        "server_cpu_s": server_cpu,
        "server_cpu_us_per_op": server_cpu / ops * 1e6,
        "server_cores_busy": server_cpu / secs,
        "client_cpu_s": sum(r["client_cpu_s"] for r in results),
        "p50_us": statistics.median(r["p50_us"] for r in results),
        "p99_us": max(r["p99_us"] for r in results),
        "loadavg_before": before,
        "raw": results,
    }


def table(runs: list[dict], configs: list[int], args: argparse.Namespace) -> str:
    lines = [
        f"{args.conns} connections, {args.size}-byte ping-pong, {args.duration:g} s per run, "
        f"{args.rounds} alternating rounds, {args.loadgens} load generator process(es); medians over rounds.",
        "",
        "| loops | ops/s | server CPU µs/op | server cores busy | client CPU s | p50 µs | p99 µs | ops/s per round |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for loops in configs:
        mine = [r for r in runs if r["loops"] == loops]

        def med(key: str) -> float:
            return statistics.median(r[key] for r in mine)

        per_round = ", ".join(format(r["ops_per_s"], ",.0f") for r in mine)
        lines.append(
            f"| {loops} | {med('ops_per_s'):,.0f} | {med('server_cpu_us_per_op'):.2f} | "
            f"{med('server_cores_busy'):.2f} | {med('client_cpu_s'):.1f} | {med('p50_us'):.0f} | "
            f"{med('p99_us'):.0f} | {per_round} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--conns", type=int, default=100)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--loops", default="1,2", help="comma-separated loop counts to compare")
    ap.add_argument("--loadgens", type=int, default=1, help="load generator processes (conns split)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    configs = [int(x) for x in args.loops.split(",")]

    build()
    runs = []
    for rnd in range(args.rounds):
        order = configs if rnd % 2 == 0 else list(reversed(configs))
        for loops in order:
            r = one_run(loops, args)
            r["round"] = rnd + 1
            runs.append(r)
            print(
                f"round {rnd + 1} loops={loops}: {r['ops_per_s']:,.0f} ops/s, "
                f"server {r['server_cpu_us_per_op']:.2f} µs/op ({r['server_cores_busy']:.2f} cores), "
                f"p50 {r['p50_us']:.0f} µs, load avg before {r['loadavg_before']:.2f}",
                flush=True,
            )
    machine = {
        "cpus": os.cpu_count(),
        "cpu": next(
            (l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
             if l.startswith("model name")),
            "?",
        ),
        "kernel": platform.release(),
        "loadavg_after": loadavg(),
    }
    md = table(runs, configs, args)
    loads = ", ".join(format(r["loadavg_before"], ".1f") for r in runs)
    md += (
        f"\n\nMachine: {machine['cpus']} CPUs ({machine['cpu']}), Linux {machine['kernel']}; "
        f"1-min load average before each run: {loads}.\n"
    )
    print()
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"args": vars(args) | {"out": str(args.out)},
                                                       "machine": machine, "runs": runs}, indent=1))
    (args.out / "results.md").write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
