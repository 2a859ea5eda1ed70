"""Alternated A/B rounds of a few servers on one scenario, each server pinned to CPU 1 and the
load generator to CPU 0: server user and system time per operation, medians and every round.

    target/bench-venv/bin/python bench/ab.py SERVER,SERVER[,...] SCENARIO [--rounds 5] [--seconds 2]
    e.g. bench/ab.py eploop-py,uvloop,py-select-epoll echo-1000x16K

For a question `bench/run` answers only within its noise (a few per cent between two servers):
the servers run side by side and are measured in turn (A B C, A B C), more rounds, and the user
and system shares apart. Run `bench/run` (or `bench/run --quick`) once first: it builds the
servers and the bench venv this uses.
"""

from __future__ import annotations

import argparse
import statistics

import runner

SERVER_CPU, LOAD_CPU = 1, 0
CLK_TCK = 100  # /proc/<pid>/stat counts clock ticks (USER_HZ)


def cpu_ticks(pid: int) -> tuple[int, int]:
    """(utime, stime) of a process, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("servers", help="comma-separated server names, as runner.py names them")
    ap.add_argument("scenario")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0, help="measured load per round and server")
    args = ap.parse_args()
    servers = {s.name: s for s in runner.all_servers()}
    sc = {s.name: s for s in runner.SCENARIOS}[args.scenario]
    names = args.servers.split(",")
    started = {}
    try:
        for name in names:
            argv = [a.replace("{port}", "0") for a in servers[name].commands[sc.mode]]
            started[name] = runner.start_server(["taskset", "-c", str(SERVER_CPU), *argv])
        per_op: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
        for _ in range(args.rounds):
            for name in names:
                proc, port = started[name]
                runner.profile_load(sc, port, 0.5, LOAD_CPU)  # warm-up
                u0, s0 = cpu_ticks(proc.pid)
                ops = runner.profile_load(sc, port, args.seconds, LOAD_CPU)
                u1, s1 = cpu_ticks(proc.pid)
                us = 1e6 / CLK_TCK / ops
                per_op[name].append(((u1 - u0) * us, (s1 - s0) * us))
    finally:
        for proc, _ in started.values():
            runner.stop_server(proc)
    first = None
    print(f"{args.scenario}: server CPU per operation (µs), medians of {args.rounds} alternated rounds")
    for name in names:
        rounds = per_op[name]
        total = statistics.median(u + s for u, s in rounds)
        first = first or total
        print(f"  {name:18s} total {total:8.2f} ({total / first:.2f}×)  "
              f"user {statistics.median(u for u, _ in rounds):7.2f}  "
              f"system {statistics.median(s for _, s in rounds):7.2f}  "
              f"rounds {[round(u + s, 1) for u, s in rounds]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
