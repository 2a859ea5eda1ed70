"""The shipped conformance checker (conform.py) passes against cmd_server in echo mode, in both
trigger modes, and against the C and Python example echo servers; it fails a broken one, and
its flood/reset scenarios fail a server that dies when a client resets."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from relharness import HERE, ROOT


def run_conform(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HERE / "conform.py"), "--", *command], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("flags", [[], ["--edge"]], ids=["level", "edge"])
def test_conform_against_cmd_server(bins, flags) -> None:
    proc = run_conform([str(bins["server"]), "{port}", "--echo", *flags])
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert "0 failed" in proc.stdout


def test_conform_against_c_example_echo_server() -> None:
    echo = ROOT / "c-examples" / "build" / "echo_server"
    if not echo.exists():
        pytest.fail(f"{echo} is missing: run `make examples` first")
    proc = run_conform([str(echo), "{port}"])
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


# Issue 10: when send() raised because of the peer, one client that floods and resets ended the
# Python example; the flood/reset scenarios catch that, and the example must now pass them all.
def test_conform_against_python_example_echo_server() -> None:
    echo = ROOT / "python-bindings" / "examples" / "echo_server.py"
    if not echo.exists():
        pytest.fail(f"{echo} is missing")
    proc = run_conform([sys.executable, str(echo), "{port}"], env={"PYTHONPATH": str(ROOT / "python-bindings")})
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


def test_conform_detects_a_broken_server(tmp_path) -> None:
    """The checker must fail a server that reports closes twice and ignores RST (a seed-style bug)."""
    broken = tmp_path / "broken_echo.py"
    broken.write_text(BROKEN_SERVER)
    proc = run_conform([sys.executable, str(broken), "{port}"])
    assert proc.returncode == 1, proc.stdout
    assert "FAIL" in proc.stdout and "PASS" in proc.stdout


def test_conform_catches_a_server_that_dies_when_a_client_resets(tmp_path) -> None:
    """The flood/reset scenarios, each followed by "does a new client get served?", must fail a
    server whose send raises on a reset peer (and that blocks while a peer does not read)."""
    fragile = tmp_path / "fragile_echo.py"
    fragile.write_text(FRAGILE_SERVER)
    names = ["flood_then_reset", "reset_with_output_pending", "reset_with_megabytes_unread"]
    proc = subprocess.run([sys.executable, str(HERE / "conform.py"), "--timeout", "30",
                           *[a for n in names for a in ("--only", n)], "--", sys.executable, str(fragile), "{port}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout
    for name in names:
        assert f"FAIL {name}" in proc.stdout, proc.stdout
    # ...while the same server passes the plain echo scenario and the serving check after it.
    proc = subprocess.run([sys.executable, str(HERE / "conform.py"), "--only", "echo_then_fin", "--",
                           sys.executable, str(fragile), "{port}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


# A seed-style echo server, correct for polite clients: one close per connection, right reasons,
# but a blocking sendall() without try: a peer that resets while it writes ends the process.
FRAGILE_SERVER = r'''
import selectors, signal, socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen(128)
sel = selectors.DefaultSelector(); sel.register(srv, selectors.EVENT_READ)
print("listening", srv.getsockname()[1], flush=True)
ids, next_id, stop = {}, [1], []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
signal.signal(signal.SIGINT, lambda *a: stop.append(1))
while not stop:
    try:
        events = sel.select(0.1)
    except InterruptedError:
        continue
    for key, _ in events:
        if key.fileobj is srv:
            c, addr = srv.accept()
            ids[c] = next_id[0]; next_id[0] += 1
            sel.register(c, selectors.EVENT_READ)
            print("accept", ids[c], "%s:%d" % addr, flush=True)
            continue
        c = key.fileobj
        try:
            data = c.recv(65536)
        except ConnectionResetError:
            sel.unregister(c); c.close()
            print("close", ids.pop(c), "peer_reset", 104, flush=True)
            continue
        if data:
            c.sendall(data)  # no try: the seed's way
        else:
            sel.unregister(c); c.close()
            print("close", ids.pop(c), "peer_eof", 0, flush=True)
for c in list(ids):
    print("close", ids.pop(c), "loop_freed", 0, flush=True); c.close()
'''


# A select.epoll echo server with the classic bugs: it logs a close on every EPOLLHUP/EPOLLRDHUP
# it sees (twice for RST after FIN) and calls every end "peer_eof".
BROKEN_SERVER = r'''
import select, signal, socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen(128); srv.setblocking(False)
ep = select.epoll(); ep.register(srv.fileno(), select.EPOLLIN)
print("listening", srv.getsockname()[1], flush=True)
conns, ids, next_id = {}, {}, [1]
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
signal.signal(signal.SIGINT, lambda *a: stop.append(1))
while not stop:
    try:
        events = ep.poll(0.1)
    except InterruptedError:
        continue
    for fd, ev in events:
        if fd == srv.fileno():
            c, addr = srv.accept(); c.setblocking(False)
            conns[c.fileno()] = c; ids[c.fileno()] = next_id[0]; next_id[0] += 1
            ep.register(c.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
            print("accept", ids[c.fileno()], "%s:%d" % addr, flush=True)
            continue
        c = conns.get(fd)
        if c is None:
            continue
        if ev & (select.EPOLLRDHUP | select.EPOLLHUP):
            print("close", ids[fd], "peer_eof", 0, flush=True)
        try:
            data = c.recv(65536)
        except OSError:
            data = b""
        if data:
            try:
                c.send(data)
            except OSError:
                pass
        elif ev & select.EPOLLIN:
            ep.unregister(fd); c.close(); del conns[fd]
for fd, c in conns.items():
    print("close", ids[fd], "loop_freed", 0, flush=True); c.close()
'''


ABORTING_SERVER = '''
import sys
import eploop

class Abort(eploop.Handler):
    def on_accept(self):
        print(f"accept {self.conn.id} 127.0.0.1:{self.conn.peername[1]}", flush=True)

    def on_data(self, data):
        self.conn.abort()  # the bug the trace must explain

    def on_close(self, reason, errno):
        print(f"close {self.conn.id} {reason} {errno}", flush=True)

with eploop.Loop() as loop:
    listener = loop.listen(("127.0.0.1", int(sys.argv[1])), Abort)
    print("listening", listener.port, flush=True)
    loop.run()
'''


def test_conform_trace_shows_why_a_connection_closed(tmp_path) -> None:
    """--trace runs the server with EPLOOP_TRACE=1 and prints, for a failed scenario, the
    library's record of its decisions: here the abort that ended the connection."""
    server = tmp_path / "aborting_echo.py"
    server.write_text(ABORTING_SERVER)
    proc = subprocess.run([sys.executable, str(HERE / "conform.py"), "--trace", "--only", "echo_then_fin", "--",
                           sys.executable, str(server), "{port}"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "python-bindings")})
    assert proc.returncode == 1, proc.stdout + proc.stderr[-2000:]
    assert "the server's last decisions (EPLOOP_TRACE)" in proc.stdout, proc.stdout
    assert " close abort 0" in proc.stdout, proc.stdout
