#!/usr/bin/env python3
"""Echo round trips per second: examples/echo_server.py (eploop) beside seedstyle_echo.py (the
seed's hand-written select.epoll loop), measured side by side.

Each run starts one server (-q), then a client process that keeps CONNS connections each
ping-ponging a SIZE-byte message (send it, wait until all of it is back, send the next) for
SECONDS after a short warm-up, and counts completed round trips. Servers alternate
(seed, eploop, seed, eploop, ...) so drift on a shared machine hits both alike; the medians of
RUNS runs are printed, with the server's CPU use during the window (a server near 100% is the
bottleneck; if both are well below, the client or the machine is) and the server CPU time per
round trip, which stays comparable on a busy machine. Not a pytest test (named bench_*).

With --loadgen PATH (bench/loadgen.c compiled: gcc -O2 -o loadgen bench/loadgen.c) the load
comes from that C client instead of the Python one, so the client cannot be the bottleneck.

usage: python bench_echo_rate.py [--conns 16] [--size 64] [--seconds 2] [--runs 3]
                                 [--loadgen PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SERVERS = {
    "seed-style select.epoll": HERE / "seedstyle_echo.py",
    "eploop echo_server.py": HERE.parent / "examples" / "echo_server.py",
}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def client(port: int, conns: int, size: int, seconds: float, warmup: float) -> None:
    """Ping-pong on `conns` connections; print the round trips completed in the window."""
    epoll = select.epoll()
    sockets = {}
    message = bytes(i % 251 for i in range(size))
    for _ in range(conns):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        sockets[sock.fileno()] = [sock, 0]  # socket, bytes of the current echo received
        epoll.register(sock.fileno(), select.EPOLLIN)
        sock.send(message)
    start = time.monotonic()
    window_start, window_end = start + warmup, start + warmup + seconds
    counted = 0
    while (now := time.monotonic()) < window_end:
        for fileno, _ in epoll.poll(0.5):
            entry = sockets[fileno]
            data = entry[0].recv(65536)
            if not data:
                sys.exit("the server closed a connection during the benchmark")
            entry[1] += len(data)
            if entry[1] >= size:
                if entry[1] != size:
                    sys.exit("the server echoed more than was sent")
                entry[1] = 0
                entry[0].send(message)
                if now >= window_start:
                    counted += 1
    print(counted / seconds, flush=True)
    for sock, _ in sockets.values():
        sock.close()


def measure(script: Path, args: argparse.Namespace) -> tuple[float, float]:
    """One run: (round trips per second, server CPU share during the window)."""
    server = subprocess.Popen(
        [sys.executable, str(script), "0", "-q"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line.startswith("listening "):
            raise SystemExit(f"{script.name} did not start: {line!r}")
        port = int(line.split()[1])
        if args.loadgen:
            return run_loadgen(args, port, server.pid)
        load = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--client",
                str(port),
                "--conns",
                str(args.conns),
                "--size",
                str(args.size),
                "--seconds",
                str(args.seconds),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(args.warmup)
        cpu_before, wall_before = cpu_seconds(server.pid), time.monotonic()
        out, _ = load.communicate(timeout=args.seconds + args.warmup + 30)
        cpu_share = (cpu_seconds(server.pid) - cpu_before) / (time.monotonic() - wall_before)
        if load.returncode != 0:
            raise SystemExit(f"the client failed against {script.name}")
        return float(out.strip()), cpu_share
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


def run_loadgen(args: argparse.Namespace, port: int, pid: int) -> tuple[float, float]:
    result = subprocess.run(
        [
            args.loadgen,
            "echo",
            "--port",
            str(port),
            "--conns",
            str(args.conns),
            "--size",
            str(args.size),
            "--duration",
            str(args.seconds),
            "--warmup",
            str(args.warmup),
            "--pid",
            str(pid),
        ],
        capture_output=True,
        text=True,
        timeout=args.seconds + args.warmup + 30,
        check=True,
    )
    report = json.loads(result.stdout)
    return report["ops_per_s"], report["server_cpu_s"] / report["duration_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conns", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=0.3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--loadgen", help="path of the compiled bench/loadgen.c")
    parser.add_argument("--client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client(args.client, args.conns, args.size, args.seconds, args.warmup)
        return
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in SERVERS}
    for run in range(args.runs):
        for name, script in SERVERS.items():
            rate, cpu = measure(script, args)
            results[name].append((rate, cpu))
            print(
                f"run {run + 1}: {name:26} {rate:8.0f} round trips/s  server CPU {cpu:4.0%}"
                f"  {cpu / rate * 1e6:5.1f} us CPU per round trip"
            )
    print(
        f"\n{args.conns} connections, {args.size}-byte messages, {args.seconds:g} s per run,"
        f" median of {args.runs} alternating runs:"
    )
    for name, runs in results.items():
        rate = statistics.median(r for r, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        per_trip = statistics.median(c / r * 1e6 for r, c in runs)
        print(
            f"  {name:26} {rate:8.0f} round trips/s  (server CPU {cpu:.0%},"
            f" {per_trip:.1f} us of server CPU per round trip)"
        )


if __name__ == "__main__":
    main()
