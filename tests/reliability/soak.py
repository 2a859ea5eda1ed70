#!/usr/bin/env python3
"""Soak tier of the eploop reliability suite: one command, several minutes, prints its figures.

    python3 tests/reliability/soak.py [--churn-seconds 120] [--workers 3] [--conns 10000] [--json FILE]

Phases (each checked with the connection oracle over the whole event log):
  1. churn: level- then edge-triggered cmd_server under faultshim (short I/O, EAGAIN storms,
     EINTR, epoll batches of 1) while client processes open connections with random lifecycles
     (echo, graceful close, abort, peer FIN, peer RST mid-stream); every byte is checked.
  2. 10,000 concurrent connections each sending 1 KiB and closing (every 10th with RST).
  3. 10,000 idle connections held (CPU while idle), then reset at once (memory afterwards).
  4. fd exhaustion: the server under `prlimit --nofile=64`: bursts of 200 clients, then 20,000
     sequential connections, then the fd count is compared with the start.
Exit status 0 only if every phase passed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from relharness import (HERE, Server, build, connect, cpu_during, offer, rst_close, serve_or_refuse,  # noqa: E402
                        start_cmd_server)

MIB = 1024 * 1024
FAULTS = {"FS_SHORT_WRITE": "5", "FS_SHORT_READ": "5", "FS_EAGAIN": "1", "FS_STORM": "8", "FS_EINTR": "1",
          "FS_EPOLL_EINTR": "2", "FS_EPOLL_SHRINK": "10"}


class Figures:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []
        self.failures: list[str] = []
        self.data: dict[str, dict] = {}

    def add(self, phase: str, what: str, value) -> None:
        self.rows.append((phase, what, str(value)))
        self.data.setdefault(phase, {})[what] = value
        print(f"  {phase:12s} {what:34s} {value}", flush=True)

    def check(self, phase: str, ok: bool, msg: str) -> None:
        if not ok:
            self.failures.append(f"{phase}: {msg}")
            print(f"  {phase:12s} FAIL {msg}", flush=True)


SERVERS: list[Server] = []


def start(bins, *args: str, **kw) -> Server:
    srv = start_cmd_server(bins, *args, **kw)
    SERVERS.append(srv)
    return srv


def loadgen_proc(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE / "loadgen.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def oracle_check(fig: Figures, phase: str, srv: Server) -> None:
    problems = srv.oracle.finish()
    fig.check(phase, not problems, f"oracle: {problems[:5]}")


def phase_churn(fig: Figures, bins, seconds: float, workers: int, edge: bool) -> None:
    phase = "churn-edge" if edge else "churn-level"
    stats = Path(tempfile.mkstemp(prefix="faultshim-")[1])
    srv = start(bins, edge=edge, faults={**FAULTS, "FS_SEED": "4242", "FS_STATS": str(stats)},
                           keep_log=False)
    t0 = time.monotonic()
    cpu0, rss0 = srv.cpu_seconds(), srv.rss_kib()
    rss_peak = rss0
    procs = [loadgen_proc(["churn", "--port", str(srv.port), "--seconds", str(seconds), "--seed", str(i + 1)])
             for i in range(workers)]
    while any(p.poll() is None for p in procs) and time.monotonic() - t0 < seconds + 120:
        rss_peak = max(rss_peak, srv.rss_kib())
        time.sleep(0.5)
    totals = {"conns": 0, "sent": 0, "received": 0, "resets": 0}
    errors: list[str] = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        if p.returncode != 0:
            errors.append(err[-500:])
            continue
        r = last_json(out)
        for k in totals:
            totals[k] += r[k]
        errors += r["errors"]
    try:
        srv.wait_until(lambda o: not o.open_ids(), 30, "churn connections closed")
    except AssertionError as e:
        errors.append(str(e))
    cpu = srv.cpu_seconds() - cpu0
    rss_end = srv.rss_kib()
    rc = srv.stop()
    wall = time.monotonic() - t0
    fig.add(phase, "connections", totals["conns"])
    fig.add(phase, "client RSTs", totals["resets"])
    fig.add(phase, "bytes sent by clients", totals["sent"])
    fig.add(phase, "bytes delivered by on_data", srv.oracle.bytes_in)
    fig.add(phase, "bytes received by clients (checked)", totals["received"])
    fig.add(phase, "close reasons", dict(sorted(srv.oracle.reasons.items())))
    faults = stats.read_text().strip() if stats.exists() else "(no stats)"
    stats.unlink(missing_ok=True)
    fig.add(phase, "faults injected", faults)
    fig.add(phase, "wall / server CPU (s)", f"{wall:.1f} / {cpu:.1f}")
    fig.add(phase, "server RSS start/peak/end (KiB)", f"{rss0} / {rss_peak} / {rss_end}")
    fig.check(phase, not errors, f"client errors: {errors[:5]}")
    fig.check(phase, rc == 0, f"server exit status {rc}: {srv.stderr_text()}")
    fig.check(phase, srv.oracle.bytes_in == totals["sent"],
              f"server delivered {srv.oracle.bytes_in} bytes, clients sent {totals['sent']}")
    fig.check(phase, srv.oracle.accepts == totals["conns"], f"{srv.oracle.accepts} accepts for {totals['conns']}")
    oracle_check(fig, phase, srv)


def phase_10k(fig: Figures, bins, conns: int) -> None:
    phase = "10k-burst"
    srv = start(bins, "--backlog", "4096", keep_log=False)
    rss0 = srv.rss_kib()
    t0 = time.monotonic()
    p = loadgen_proc(["many", "--port", str(srv.port), "--conns", str(conns), "--bytes", "1024",
                      "--rst-every", "10", "--timeout", "300"])
    out, err = p.communicate(timeout=400)
    fig.check(phase, p.returncode == 0, f"loadgen failed: {err[-800:]}")
    if p.returncode == 0:
        r = last_json(out)
        srv.wait_until(lambda o: o.closes >= conns, 120, f"{conns} closes")
        lost = sum(1024 - srv.oracle.conns[srv.oracle.by_peer_port[port]].bytes_in for port in r["ports"])
        fig.add(phase, "connections (concurrent)", r["conns"])
        fig.add(phase, "accepts / closes", f"{srv.oracle.accepts} / {srv.oracle.closes}")
        fig.add(phase, "bytes delivered / lost", f"{srv.oracle.bytes_in} / {lost}")
        fig.add(phase, "close reasons", dict(sorted(srv.oracle.reasons.items())))
        fig.add(phase, "time to open / total (s)", f"{r['open_seconds']} / {time.monotonic() - t0:.1f}")
        fig.check(phase, lost == 0 and srv.oracle.accepts == conns, f"lost {lost} bytes")
    fig.add(phase, "server RSS before/after (KiB)", f"{rss0} / {srv.rss_kib()}")
    rc = srv.stop()
    fig.check(phase, rc == 0, f"exit {rc}")
    oracle_check(fig, phase, srv)


def phase_idle(fig: Figures, bins, conns: int) -> None:
    phase = "10k-idle"
    srv = start(bins, "--backlog", "4096", keep_log=False)
    time.sleep(0.2)
    rss0 = srv.rss_kib()
    p = loadgen_proc(["idle", "--port", str(srv.port), "--conns", str(conns), "--timeout", "300"],
                     stdin=subprocess.PIPE)
    try:
        ready = json.loads(p.stdout.readline())
        srv.wait_until(lambda o: o.accepts >= conns, 120, f"{conns} accepts")
        time.sleep(0.5)
        rss_held = srv.rss_kib()
        cpu = cpu_during(srv.pid, 3.0)
        t0 = time.monotonic()
        out, err = p.communicate("rst\n", timeout=120)
        srv.wait_until(lambda o: o.closes >= conns, 120, f"{conns} closes")
        t_reset = time.monotonic() - t0
        time.sleep(0.5)
        rss_after = srv.rss_kib()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    fig.add(phase, "connections held", ready["ready"])
    fig.add(phase, "server CPU while idle (3 s)", f"{cpu:.3f} s")
    fig.add(phase, "RSS base/held/after reset (KiB)", f"{rss0} / {rss_held} / {rss_after}")
    fig.add(phase, "all reset -> all closed (s)", f"{t_reset:.2f}")
    fig.add(phase, "close reasons", dict(sorted(srv.oracle.reasons.items())))
    fig.check(phase, cpu < 0.1, f"{cpu:.2f}s CPU while idle")
    fig.check(phase, srv.oracle.reasons.get("peer_reset", 0) == conns, "not every reset seen as peer_reset")
    fig.check(phase, rss_after - rss0 < max(8 * 1024, (rss_held - rss0) // 2),
              f"memory not back near baseline: {rss0} -> {rss_after} KiB")
    rc = srv.stop()
    fig.check(phase, rc == 0, f"exit {rc}")
    oracle_check(fig, phase, srv)


def phase_exhaustion(fig: Figures, bins, sequential: int) -> None:
    phase = "exhaustion"
    srv = start(bins, nofile=64, keep_log=False)
    base_fds = srv.fd_count()
    cpu0 = srv.cpu_seconds()
    hanging_total = served_total = refused_total = 0
    for _ in range(5):
        offered = [offer(srv.port) for _ in range(200)]
        socks = [s for s in offered if s is not None]
        refused_total += len(offered) - len(socks)
        outcome = serve_or_refuse(socks, time.monotonic() + 5)
        served_total += sum(1 for v in outcome.values() if v == "served")
        refused_total += sum(1 for v in outcome.values() if v == "refused")
        hanging_total += sum(1 for v in outcome.values() if v == "hanging")
        for s in socks:
            s.close()
        srv.wait_until(lambda o: not o.open_ids(), 30, "burst closed")
    t0 = time.monotonic()
    for i in range(sequential):
        s = connect(srv.port, timeout=5)
        s.sendall(b"ECHO\nx")
        if s.recv(10) != b"x":
            fig.check(phase, False, f"sequential connection {i} not served")
            break
        rst_close(s) if i % 3 == 0 else s.close()
    srv.wait_until(lambda o: not o.open_ids(), 30, "sequential closed")
    t_seq = time.monotonic() - t0
    deadline = time.monotonic() + 5
    while srv.fd_count() != base_fds and time.monotonic() < deadline:
        time.sleep(0.05)
    fds = srv.fd_count()
    cpu = srv.cpu_seconds() - cpu0
    fig.add(phase, "bursts of 200: served/refused/hanging", f"{served_total} / {refused_total} / {hanging_total}")
    fig.add(phase, "sequential connections", f"{sequential} in {t_seq:.1f} s")
    fig.add(phase, "fds before / after", f"{base_fds} / {fds}")
    fig.add(phase, "server CPU (s)", f"{cpu:.1f}")
    fig.check(phase, hanging_total == 0, f"{hanging_total} clients left hanging")
    fig.check(phase, fds == base_fds, f"fd leak: {base_fds} -> {fds}")
    rc = srv.stop()
    fig.check(phase, rc == 0, f"exit {rc}")
    oracle_check(fig, phase, srv)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--churn-seconds", type=float, default=120.0, help="per trigger mode")
    p.add_argument("--workers", type=int, default=3, help="churn client processes")
    p.add_argument("--conns", type=int, default=10000, help="connections for the 10k phases")
    p.add_argument("--sequential", type=int, default=20000, help="sequential connections under the fd limit")
    p.add_argument("--json", help="also write the figures here")
    a = p.parse_args()
    bins = build()
    fig = Figures()
    t0 = time.monotonic()
    print("eploop soak", flush=True)
    phases = [("churn-level", lambda: phase_churn(fig, bins, a.churn_seconds, a.workers, edge=False)),
              ("churn-edge", lambda: phase_churn(fig, bins, a.churn_seconds, a.workers, edge=True)),
              ("10k-burst", lambda: phase_10k(fig, bins, a.conns)),
              ("10k-idle", lambda: phase_idle(fig, bins, a.conns)),
              ("exhaustion", lambda: phase_exhaustion(fig, bins, a.sequential))]
    for name, run_phase in phases:
        print(f"[{name}]", flush=True)
        try:
            run_phase()
        except Exception as e:  # record and go on with the next phase
            fig.check(name, False, f"{type(e).__name__}: {e}")
        finally:
            for srv in SERVERS:
                srv.kill()
            SERVERS.clear()
    fig.add("total", "wall time (s)", f"{time.monotonic() - t0:.0f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"figures": fig.data, "failures": fig.failures}, indent=2))
    if fig.failures:
        print("soak FAILED:\n  " + "\n  ".join(fig.failures))
        return 1
    print("soak passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
