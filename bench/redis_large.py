"""1 MiB values over the Redis protocol, from Python: eploop against asyncio and uvloop.

    target/bench-venv/bin/python bench/redis_large.py [--rounds N] [--requests N] [--out FILE]

Issue 12's measurement for large messages: a request/response server holding 1 MiB values,
under `redis-benchmark -t set,get -d 1048576 -c 10` (apt: redis-tools). Each server is the same
Python code on its loop (bench/servers/*.py --resp, the RespSession of bench_common.py: a SET's
value goes into the store with one copy out of the connection's input buffer, a GET's reply is
sent as header, value, CRLF without joining them) with the same flow control (stop reading while
the output is above the high-water mark). Servers are pinned to one core and redis-benchmark to
the other; after one unmeasured warm-up run each, rounds alternate the servers (a server's
first runs cost more while its allocations grow); the figure is server CPU per request (utime + stime
from /proc over the run, divided by the SETs and GETs), median over the rounds, and its ratio to
uvloop's.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

import runner

PY = str(runner.BENCH_PY)
SERVERS = {
    "eploop-py": [PY, "bench/servers/eploop_server.py", "0", "--resp", "-q"],
    "asyncio": [PY, "bench/servers/py_asyncio.py", "0", "--resp", "-q"],
    "uvloop": [PY, "bench/servers/py_uvloop.py", "0", "--resp", "-q"],
}
REFERENCE = "uvloop"


class _Server:
    """What runner.Running needs of a catalog server."""

    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        self.commands = {"resp": argv}


def one_run(server: runner.Running, requests: int) -> dict:
    before = server.cpu_seconds()[0]
    rc, out, err = runner.run_tool(
        ["redis-benchmark", "-h", "127.0.0.1", "-p", str(server.port), "-t", "set,get",
         "-d", str(1 << 20), "-n", str(requests), "-c", "10", "--csv"], 600)
    cpu = server.cpu_seconds()[0] - before
    if rc != 0 or not server.alive():
        return {"error": (err or out).strip()[-300:] or f"exit {rc}"}
    rps = {}
    for line in out.splitlines():
        cells = [c.strip('"') for c in line.split(",")]
        if len(cells) >= 2 and cells[0] in ("SET", "GET"):
            rps[cells[0]] = float(cells[1])
    return {"cpu_us_per_request": cpu / (2 * requests) * 1e6, "rps": rps}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=900, help="SETs (and GETs) per run")
    ap.add_argument("--out", type=Path, help="also write the table to this file")
    args = ap.parse_args()
    if not shutil.which("redis-benchmark"):
        print("redis-benchmark is not installed (apt-get install redis-tools)", file=sys.stderr)
        return 1
    running = {name: runner.Running(_Server(name, argv), "resp") for name, argv in SERVERS.items()}
    results: dict[str, list[dict]] = {name: [] for name in SERVERS}
    try:
        for server in running.values():  # warm-up, not measured: first allocations, arenas
            one_run(server, args.requests)
        for rnd in range(args.rounds):
            for name, server in running.items():
                res = one_run(server, args.requests)
                results[name].append(res)
                runner.log(f"round {rnd + 1} {name}: " + (res["error"] if "error" in res else
                           f"{res['cpu_us_per_request']:.0f} us/request, {res['rps']}"))
    finally:
        for server in running.values():
            server.stop()

    def median(name: str, key: str, sub: str = "") -> float | None:
        values = [r[key][sub] if sub else r[key] for r in results[name] if "error" not in r
                  and (not sub or sub in r[key])]
        return statistics.median(values) if values else None

    ref = median(REFERENCE, "cpu_us_per_request")
    lines = [f"redis-benchmark -t set,get -d 1048576 -c 10 -n {args.requests}, {args.rounds} "
             "alternated rounds; server CPU per request (median) and its ratio to uvloop:", "",
             "| server | CPU µs/request | ratio to uvloop | SET requests/s | GET requests/s |",
             "|---|---|---|---|---|"]
    for name in SERVERS:
        cpu = median(name, "cpu_us_per_request")
        if cpu is None:
            lines.append(f"| {name} | error | – | – | – |")
            continue
        ratio = f"{cpu / ref:.2f}×" if ref else "–"
        sets, gets = median(name, "rps", "SET"), median(name, "rps", "GET")
        lines.append(f"| {name} | {cpu:.0f} | {ratio} | {sets or 0:.0f} | {gets or 0:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
