"""Profiles one benchmark server under load: user-space instructions per operation and where
they go (valgrind --tool=callgrind), or syscalls per operation (strace -c).

    target/bench-venv/bin/python bench/profile_server.py SERVER SCENARIO [--tool callgrind|strace]
                                                  [--seconds N] [--top N]
    e.g. bench/profile_server.py eploop-py echo-50x64
         bench/profile_server.py eploop-c http-pipelined --tool strace

SERVER and SCENARIO are the names runner.py uses. Callgrind counts instructions, not time, so
the figure is repeatable whatever else the machine does (the kernel's share is not counted).
Instrumentation is switched on only while the load runs, so start-up is left out.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import runner


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("server")
    ap.add_argument("scenario")
    ap.add_argument("--tool", choices=["callgrind", "strace"], default="callgrind")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    servers = {s.name: s for s in runner.all_servers()}
    scenarios = {sc.name: sc for sc in runner.SCENARIOS + runner.CALLGRIND_SCENARIOS}
    server, sc = servers[args.server], scenarios[args.scenario]
    argv = [a.replace("{port}", "0") for a in server.commands[sc.mode]]
    out = Path(tempfile.mkdtemp(prefix="bench-profile-"))

    if args.tool == "strace":
        trace = out / "strace.txt"
        proc, port = runner.start_server(["strace", "-f", "-c", "-o", str(trace), *argv])
        time.sleep(0.5)
        ops = runner.profile_load(sc, port, args.seconds)
        # Stop the traced server, not strace: strace writes its summary when its child exits.
        child = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        if child:
            subprocess.run(["kill", "-TERM", child[0]])
        proc.wait(60)
        print(f"{args.server} {args.scenario}: {ops} operations; syscalls per operation "
              "(including connection set-up):")
        for line in trace.read_text().splitlines()[2:]:
            f = line.split()
            if len(f) >= 5 and f[-1] not in ("total",) and f[3].isdigit():
                print(f"  {f[-1]:16s} {int(f[3]) / ops:8.3f}")
        return 0

    cg = out / "callgrind.out"
    ops, _ = runner.callgrind_run(argv, sc, args.seconds, cg)
    annotate = subprocess.run(["callgrind_annotate", "--inclusive=no", str(cg)],
                              capture_output=True, text=True).stdout
    total = 0
    m = re.search(r"^([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", annotate, re.M)
    if m:
        total = int(m.group(1).replace(",", ""))
    print(f"{args.server} {args.scenario}: {ops} operations, {total:,} instructions in user space, "
          f"{total / max(ops, 1):,.0f} per operation (callgrind, {cg})")
    print(f"top {args.top} functions by self cost:")
    rows = [ln for ln in annotate.splitlines() if re.match(r"^\s*[\d,]+ \(\s*[\d.]+%\)\s+\S", ln)
            and "PROGRAM TOTALS" not in ln]
    for ln in rows[:args.top]:
        print("  " + ln.strip()[:160])
    return 0


if __name__ == "__main__":
    sys.exit(main())
