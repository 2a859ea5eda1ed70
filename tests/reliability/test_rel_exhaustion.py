"""fd exhaustion: the server under `prlimit --nofile=64` with 200 clients arriving. CPU stays low,
clients beyond the limit are refused or closed promptly (not left hanging in the backlog),
service resumes when fds free up, and many sequential connections leak no fd."""

from __future__ import annotations

import time

from relharness import connect, cpu_during, offer, rst_close, serve_or_refuse

NOFILE = 64
CLIENTS = 200
PROMPT = 5.0  # seconds within which every client must be served or turned away


def test_fd_exhaustion_sheds_load_promptly_and_recovers(server, mode) -> None:
    srv = server(edge=mode == "edge", nofile=NOFILE)
    offered = [offer(srv.port) for _ in range(CLIENTS)]
    socks = [s for s in offered if s is not None]
    outcome = serve_or_refuse(socks, time.monotonic() + PROMPT)
    served = [s for s in socks if outcome[s] == "served"]
    hanging = [s for s in socks if outcome[s] == "hanging"]
    assert not hanging, f"{len(hanging)} clients left hanging (served {len(served)}) with the fd limit reached"
    assert 10 < len(served) < NOFILE, f"{len(served)} served under a limit of {NOFILE} fds"
    # Still at the limit (served clients hold their connections): the loop must sleep.
    cpu = cpu_during(srv.pid, 2.0)
    print(f"\n[{mode}] at the fd limit: {len(served)} served, {len(socks) - len(served)} refused of {CLIENTS}, "
          f"{cpu:.3f}s CPU in 2 s")
    assert cpu < 0.2, f"server used {cpu:.2f}s CPU in 2s while at its fd limit"
    # A newcomer now is refused promptly too.
    extra = offer(srv.port)
    if extra is not None:
        assert serve_or_refuse([extra], time.monotonic() + PROMPT)[extra] == "refused"
        extra.close()
    for s in socks:
        s.close()
    srv.wait_until(lambda o: not o.open_ids(), 10, "every accepted connection closed")
    # Service resumes.
    for _ in range(20):
        s = offer(srv.port)
        assert s is not None and serve_or_refuse([s], time.monotonic() + PROMPT)[s] == "served", \
            "service did not resume"
        s.close()
    srv.finish()


def test_sequential_connections_leak_no_fd(server, mode) -> None:
    srv = server(edge=mode == "edge", nofile=NOFILE)
    base = srv.fd_count()
    n = 2000
    for i in range(n):
        s = connect(srv.port, timeout=5)
        s.sendall(b"ECHO\nx")
        assert s.recv(10) == b"x"
        if i % 3 == 0:
            rst_close(s)
        else:
            s.close()
    srv.wait_until(lambda o: o.closes >= n, 20, f"{n} closes")
    deadline = time.monotonic() + 5
    while srv.fd_count() != base and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.fd_count() == base, f"fds: {base} before, {srv.fd_count()} after {n} connections"
    assert srv.oracle.accepts == n
    srv.finish()
