"""Load shapes (clients in a separate process, tests/reliability/loadgen.py): many concurrent
connections, one flooder beside 100 ping-pong peers, a peer that never reads, and loop teardown
with 1,000 live connections. The 10,000-connection variants are in soak.py."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from relharness import HERE, connect, cpu_during, first_mismatch, loadgen, pattern, recv_until_eof

MIB = 1024 * 1024


def run_many(srv, conns: int, rst_every: int = 0, timeout: float = 120) -> dict:
    proc = loadgen(["many", "--port", str(srv.port), "--conns", str(conns), "--bytes", "1024",
                    "--rst-every", str(rst_every)], timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    srv.wait_until(lambda o: o.closes >= conns, 60, f"{conns} closes")
    for port in result["ports"]:
        rec = srv.record(srv.oracle.by_peer_port[port])
        assert rec.bytes_in == 1024, f"{rec.bytes_in} of 1024 bytes delivered: {rec.lines[-3:]}"
        assert rec.closes == 1
    return result


def test_1000_concurrent_connections_each_send_1kib(server, mode) -> None:
    srv = server(edge=mode == "edge")
    result = run_many(srv, 1000, rst_every=7)
    assert srv.oracle.accepts == 1000 and srv.oracle.closes == 1000
    assert srv.oracle.bytes_in == 1000 * 1024
    resets = srv.oracle.reasons.get("peer_reset", 0)
    assert resets == result["resets"], (srv.oracle.reasons, result["resets"])
    srv.finish()


def test_flooder_does_not_starve_ping_pong_peers(server, mode) -> None:
    srv = server(edge=mode == "edge")
    flood = subprocess.Popen([sys.executable, str(HERE / "loadgen.py"), "flood", "--port", str(srv.port),
                              "--seconds", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        srv.wait_until(lambda o: o.bytes_in > 10 * MIB, 10, "flood under way")
        pp = loadgen(["pingpong", "--port", str(srv.port), "--peers", "100", "--rounds", "20", "--timeout", "30"], 40)
        assert pp.returncode == 0, pp.stderr[-2000:]
        stats = json.loads(pp.stdout.strip().splitlines()[-1])
        flood_out, flood_err = flood.communicate(timeout=30)
    finally:
        if flood.poll() is None:
            flood.kill()
            flood.wait(10)
    assert flood.returncode == 0, flood_err[-2000:]
    flooded = json.loads(flood_out.strip().splitlines()[-1])["flood_bytes"]
    print(f"\n[{mode}] flood {flooded / MIB:.0f} MiB in 3 s; ping-pong {stats}")
    assert stats["round_trips"] == 100 * 20
    assert stats["p99_ms"] < 250, f"ping-pong p99 {stats['p99_ms']} ms beside a flooder"
    srv.wait_until(lambda o: o.closes >= 101, 20, "all closed")
    srv.finish()


def test_never_reading_peer_bounded_memory_no_busy_loop(server, mode) -> None:
    srv = server(edge=mode == "edge")
    total = 64 * MIB
    sock = connect(srv.port, rcvbuf=64 * 1024)
    cid = srv.conn_id(sock)
    rss0 = srv.rss_kib()
    sock.sendall(b"STREAM %d\n" % total)
    time.sleep(0.5)
    cpu = cpu_during(srv.pid, 2.0)
    grown = srv.rss_kib() - rss0
    print(f"\n[{mode}] never-reading peer: RSS +{grown} KiB, {cpu:.3f}s CPU in 2 s")
    assert cpu < 0.2, f"server used {cpu:.2f}s CPU in 2s waiting for a peer that does not read"
    assert grown < 8 * 1024, f"server RSS grew {grown} KiB (watermarks are 64 KiB)"
    got, how = recv_until_eof(sock, 60, limit=total)
    assert len(got) == total and first_mismatch(got, pattern(0, total)) == -1
    sock.close()
    srv.wait_closed(cid)
    srv.finish()


def test_teardown_with_1000_live_connections(server, mode) -> None:
    srv = server(edge=mode == "edge")
    idle = subprocess.Popen([sys.executable, str(HERE / "loadgen.py"), "idle", "--port", str(srv.port),
                             "--conns", "1000", "--timeout", "60"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert json.loads(idle.stdout.readline())["ready"] == 1000
        srv.wait_until(lambda o: o.accepts >= 1000, 30, "1000 accepts")
        cpu = cpu_during(srv.pid, 1.0)
        assert cpu < 0.1, f"{cpu:.2f}s CPU in 1s with 1000 idle connections"
        t0 = time.monotonic()
        assert srv.stop() == 0, srv.stderr_text()
        took = time.monotonic() - t0
        out, err = idle.communicate("wait-eof\n", timeout=60)
    finally:
        if idle.poll() is None:
            idle.kill()
            idle.wait(10)
    assert idle.returncode == 0, err[-2000:]
    assert json.loads(out.strip().splitlines()[-1])["eofs"] == 1000, "peers did not all see the close"
    assert srv.oracle.freed, "no 'freed' line: ep_loop_free did not return"
    assert srv.oracle.reasons.get("loop_freed", 0) == 1001  # 1000 connections + the listener
    assert took < 10, f"teardown took {took:.1f}s"
    srv.finish()
