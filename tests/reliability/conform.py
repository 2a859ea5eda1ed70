#!/usr/bin/env python3
"""eploop close-path conformance checker, for any echo server that prints the event log.

    python3 tests/reliability/conform.py [--only NAME ...] [--list] [--trace] -- <server command>

The server command gets its port from the command line: write `{port}` where the port goes
(it is replaced by 0), or pass 0 yourself. The server must echo what it receives and print, on
stdout, line-buffered, eploop's event log (as the examples print it):

    listening <port>
    accept <id> <peer-ip>:<peer-port>
    close <id> <reason> <errno>

and stop cleanly (closing and logging every connection, exit status 0) on SIGTERM and SIGINT.
Each scenario starts a fresh server, drives real connections on 127.0.0.1, and checks the log
with the oracle: every connection is accepted once, closes exactly once with the right reason,
logs nothing after its close; ids are never reused; the peer gets back exactly what it sent;
the server does not spin; and after every scenario (but the two that stop it on purpose) the
server must still serve a new client: connect, echo round trip, close. The flood/reset
scenarios (flood_then_reset, reset_with_output_pending, reset_with_megabytes_unread) catch a
server that dies when one client goes away badly, e.g. because a send raised or returned an
error it did not expect. Prints PASS/FAIL per scenario and exits 1 if any failed. With --trace,
an eploop server runs with EPLOOP_TRACE=1 and a failed scenario shows the end of its trace (the
library's record of every decision: epoll bits, reads, writes, FIN, the close and its cause).
Needs only Python 3.9+ and Linux.
"""

from __future__ import annotations

import argparse
import selectors
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from relharness import (ECONNRESET, EPIPE, Server, connect, cpu_during, first_mismatch, pattern,  # noqa: E402
                        recv_exact, recv_until_eof, rst_close)

RESET = {("peer_reset", ECONNRESET), ("peer_reset", EPIPE)}
EOF = {("peer_eof", 0)}
SCENARIOS: dict[str, tuple[str, Callable[[Server], None]]] = {}
STOPS_SERVER: set[str] = set()  # scenarios that end the server on purpose (SIGTERM/SIGINT)


def scenario(doc: str, stops_server: bool = False):
    def register(fn: Callable[[Server], None]) -> Callable[[Server], None]:
        SCENARIOS[fn.__name__] = (doc, fn)
        if stops_server:
            STOPS_SERVER.add(fn.__name__)
        return fn
    return register


def close_of(srv: Server, cid: int, allowed: set[tuple[str, int]], timeout: float = 10.0) -> None:
    """Wait for the close of id cid and check its reason."""
    rec = srv.wait_closed(cid, timeout)
    assert (rec.close_reason, rec.close_err) in allowed, \
        f"close reason {rec.close_reason} {rec.close_err}, expected one of {sorted(allowed)}"


def echo_exact(sock: socket.socket, payload: bytes, timeout: float = 30.0) -> bytes:
    """Send payload from a thread while reading the same number of bytes back."""
    err: list[BaseException] = []

    def writer() -> None:
        try:
            sock.sendall(payload)
        except BaseException as e:
            err.append(e)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    got = recv_exact(sock, len(payload), timeout)
    t.join(timeout)
    if err:
        raise err[0]
    return got


@scenario("send, read the echo, close (FIN): one close, peer_eof")
def echo_then_fin(srv: Server) -> None:
    s = connect(srv.port)
    cid = srv.conn_id(s)
    assert echo_exact(s, b"hello, eploop\n") == b"hello, eploop\n"
    s.close()
    close_of(srv, cid, EOF)


@scenario("the seed's telnet quit: send a line, quit; one close and no busy loop afterwards")
def telnet_quit(srv: Server) -> None:
    s = connect(srv.port)
    cid = srv.conn_id(s)
    assert echo_exact(s, b"123456\r\n") == b"123456\r\n"
    s.close()
    close_of(srv, cid, EOF)
    cpu = cpu_during(srv.pid, 1.0)
    assert cpu < 0.1, f"server used {cpu:.2f}s CPU in the second after the peer left"


@scenario("connect and close without a byte: one close, peer_eof")
def silent_peer(srv: Server) -> None:
    s = connect(srv.port)
    cid = srv.conn_id(s)
    s.close()
    close_of(srv, cid, EOF)


@scenario("SHUT_WR after 256 KiB: every byte echoed, then FIN (not RST); peer_eof")
def shutwr_gets_everything(srv: Server) -> None:
    s = connect(srv.port)
    cid = srv.conn_id(s)
    payload = pattern(0, 256 * 1024)
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    got, how = recv_until_eof(s, 30)
    s.close()
    assert how == "eof", f"peer saw {how} after {len(got)} bytes"
    assert got == payload, f"echo differs at byte {first_mismatch(got, payload)} ({len(got)} bytes)"
    close_of(srv, cid, EOF)


@scenario("RST from the peer: one close, peer_reset")
def peer_reset(srv: Server) -> None:
    s = connect(srv.port)
    cid = srv.conn_id(s)
    assert echo_exact(s, b"x" * 100) == b"x" * 100
    rst_close(s)
    close_of(srv, cid, RESET)


@scenario("FIN, then RST on the half-closed socket: exactly one close")
def rst_after_fin(srv: Server) -> None:
    s = connect(srv.port)
    cid = srv.conn_id(s)
    assert echo_exact(s, b"y" * 100) == b"y" * 100
    s.shutdown(socket.SHUT_WR)
    time.sleep(0.05)
    rst_close(s)
    close_of(srv, cid, EOF | RESET)
    time.sleep(0.2)
    assert not srv.oracle.violations, srv.oracle.violations


@scenario("RST while the server still has our data to read: one close, no lost close")
def rst_with_unread_data(srv: Server) -> None:
    s = connect(srv.port)
    cid = srv.conn_id(s)
    s.sendall(b"z" * 200_000)
    rst_close(s)
    close_of(srv, cid, RESET | EOF)


@scenario("close without reading 1 MiB of echo (close turns into RST): one close, no spin")
def close_with_unread_echo(srv: Server) -> None:
    s = connect(srv.port, rcvbuf=64 * 1024)
    cid = srv.conn_id(s)
    s.settimeout(10)
    try:
        s.sendall(pattern(0, 1024 * 1024))
    except OSError:
        pass
    time.sleep(0.2)
    s.close()
    close_of(srv, cid, RESET | EOF)
    cpu = cpu_during(srv.pid, 1.0)
    assert cpu < 0.1, f"server used {cpu:.2f}s CPU after the peer left"


@scenario("4 MiB echoed while reading concurrently: byte-exact")
def big_echo(srv: Server) -> None:
    s = connect(srv.port)
    cid = srv.conn_id(s)
    payload = pattern(7, 4 * 1024 * 1024)
    got = echo_exact(s, payload, 60)
    assert got == payload, f"echo differs at byte {first_mismatch(got, payload)}"
    s.shutdown(socket.SHUT_WR)
    rest, how = recv_until_eof(s, 10)
    s.close()
    assert rest == b"" and how == "eof", (len(rest), how)
    close_of(srv, cid, EOF)


@scenario("100 concurrent connections, 1 KiB echo each, mixed FIN/RST: 100 accepts, 100 closes")
def concurrent_100(srv: Server) -> None:
    socks = [connect(srv.port) for _ in range(100)]
    ids = [srv.conn_id(s) for s in socks]
    for i, s in enumerate(socks):
        s.sendall(pattern(i, 1024))
    for i, s in enumerate(socks):
        assert recv_exact(s, 1024, 10) == pattern(i, 1024)
    for i, s in enumerate(socks):
        rst_close(s) if i % 4 == 0 else s.close()
    for i, cid in enumerate(ids):
        close_of(srv, cid, RESET if i % 4 == 0 else EOF)
    assert srv.oracle.accepts == 100


@scenario("50 idle connections: the server sleeps (no CPU), then all close once")
def idle_connections(srv: Server) -> None:
    socks = [connect(srv.port) for _ in range(50)]
    ids = [srv.conn_id(s) for s in socks]
    cpu = cpu_during(srv.pid, 1.0)
    assert cpu < 0.1, f"server used {cpu:.2f}s CPU in 1s with 50 idle connections"
    for s in socks:
        s.close()
    for cid in ids:
        close_of(srv, cid, EOF)


def flood(sock: socket.socket, total: int, seconds: float) -> int:
    """Send up to total pattern bytes without reading anything, for at most `seconds` or until
    the peer stops taking them (nothing accepted for 0.5 s); returns the bytes the kernel took."""
    sock.setblocking(False)
    data = pattern(0, total)
    sent, last_progress = 0, time.monotonic()
    deadline = last_progress + seconds
    while sent < total and time.monotonic() < min(deadline, last_progress + 0.5):
        try:
            n = sock.send(data[sent:sent + 256 * 1024])
        except BlockingIOError:
            time.sleep(0.005)
            continue
        sent += n
        last_progress = time.monotonic()
    sock.setblocking(True)
    return sent


@scenario("flood 8 MiB without reading the echo, then RST: one close, the server lives")
def flood_then_reset(srv: Server) -> None:
    s = connect(srv.port, rcvbuf=64 * 1024)
    cid = srv.conn_id(s)
    flood(s, 8 * 1024 * 1024, 3.0)
    rst_close(s, settle=0)  # at once: the server is still reading and echoing when it arrives
    close_of(srv, cid, RESET | EOF)


def pump(sock: socket.socket, total: int, until_received: int, seconds: float) -> int:
    """Send pattern bytes and read the echo at the same time (one thread, non-blocking) until
    until_received bytes came back; returns the bytes received."""
    sel = selectors.DefaultSelector()
    sock.setblocking(False)
    sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    data = pattern(0, total)
    sent = got = 0
    deadline = time.monotonic() + seconds
    while got < until_received and time.monotonic() < deadline:
        for _, ev in sel.select(0.1):
            if ev & selectors.EVENT_READ:
                b = sock.recv(256 * 1024)
                assert b, f"server closed after echoing {got} bytes"
                got += len(b)
            if ev & selectors.EVENT_WRITE and sent < total:
                try:
                    sent += sock.send(data[sent:sent + 256 * 1024])
                except BlockingIOError:
                    pass
            if sent >= total:
                sel.modify(sock, selectors.EVENT_READ)
    sel.close()
    sock.setblocking(True)
    assert got >= until_received, f"only {got} bytes echoed in {seconds}s"
    return got


@scenario("RST mid-echo (x4) while the server has output pending and input arriving: one close each")
def reset_with_output_pending(srv: Server) -> None:
    # Four connections, cut at different points: where the RST lands in the server's step
    # (writing, reading, paused) is a race, so one cut alone might miss the window.
    for cut in (256 * 1024, 512 * 1024, 1024 * 1024, 2048 * 1024):
        s = connect(srv.port, rcvbuf=64 * 1024)  # small: once we stop reading, output piles up
        cid = srv.conn_id(s)
        pump(s, 8 * 1024 * 1024, cut, 20.0)  # the echo is flowing both ways
        flood(s, 1024 * 1024, 0.1)  # we stop reading, keep sending: the server's output piles up
        rst_close(s, settle=0)  # now, with the server mid-stream: its next write hits the RST
        close_of(srv, cid, RESET | EOF)


@scenario("RST with megabytes written and unread (the server's window full, its reading paused): one close")
def reset_with_megabytes_unread(srv: Server) -> None:
    s = connect(srv.port, rcvbuf=16 * 1024)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
    cid = srv.conn_id(s)
    sent = flood(s, 16 * 1024 * 1024, 4.0)  # until the server stops taking bytes
    assert sent >= 1024 * 1024, f"only {sent} bytes left us before the connection stalled"
    rst_close(s, settle=0)  # megabytes still in flight or unread on the server's side
    close_of(srv, cid, RESET | EOF)


def serves_a_new_client(srv: Server) -> None:
    """After every scenario: the server still accepts, echoes, and closes a new client."""
    try:
        s = connect(srv.port, timeout=5)
    except OSError as e:
        raise AssertionError(f"server no longer serving: a new client cannot connect ({e})") from None
    try:
        cid = srv.conn_id(s, timeout=5)
        msg = b"still serving?\n"
        got = echo_exact(s, msg, 5)
        assert got == msg, f"a new client got {got!r} back"
    except (AssertionError, OSError) as e:
        raise AssertionError(f"server no longer serving a new client: {e}") from None
    s.close()
    close_of(srv, cid, EOF)


def stop_closes_everything(srv: Server, sig: int) -> None:
    socks = [connect(srv.port) for _ in range(5)]
    ids = [srv.conn_id(s) for s in socks]
    assert echo_exact(socks[0], b"before stop") == b"before stop"
    rc = srv.stop(sig, timeout=10)
    assert rc == 0, f"exit status {rc} after {signal.Signals(sig).name}"
    for cid in ids:
        assert srv.record(cid).closes == 1, f"id {cid} was not closed (and logged) at shutdown"
    for s in socks:
        got, how = recv_until_eof(s, 5)
        assert how in ("eof", "reset"), f"peer not told after shutdown: {how}"
        s.close()


@scenario("SIGTERM with 5 open connections: each closed and logged, exit status 0", stops_server=True)
def sigterm_closes_all(srv: Server) -> None:
    stop_closes_everything(srv, signal.SIGTERM)


@scenario("SIGINT with 5 open connections: each closed and logged, exit status 0", stops_server=True)
def sigint_closes_all(srv: Server) -> None:
    stop_closes_everything(srv, signal.SIGINT)


def _on_alarm(signum, frame) -> None:
    raise TimeoutError("scenario exceeded its time bound (--timeout)")


def run(command: list[str], names: list[str], timeout: float, trace: bool = False) -> int:
    signal.signal(signal.SIGALRM, _on_alarm)
    passed = failed = 0
    for name in names:
        doc, fn = SCENARIOS[name]
        t0 = time.monotonic()
        srv = None
        signal.alarm(int(timeout))
        try:
            srv = Server(command, env={"EPLOOP_TRACE": "1"} if trace else None, strict=False)
            fn(srv)
            if name not in STOPS_SERVER:
                serves_a_new_client(srv)
            srv.finish()
            passed += 1
            print(f"PASS {name:24s} {time.monotonic() - t0:5.2f}s  {doc}", flush=True)
        except Exception as e:  # report every scenario, keep going
            failed += 1
            msg = str(e).strip().replace("\n", "\n       ") or type(e).__name__
            print(f"FAIL {name:24s} {time.monotonic() - t0:5.2f}s  {doc}\n       {msg}", flush=True)
            if trace and srv is not None:
                lines = [ln for ln in srv.settled_stderr_text(20000).splitlines() if ln.startswith("trace ")]
                print("       the server's last decisions (EPLOOP_TRACE):", flush=True)
                for line in lines[-40:]:
                    print(f"         {line}", flush=True)
        finally:
            signal.alarm(0)
            if srv is not None:
                srv.kill()
    print(f"conform: {passed} passed, {failed} failed")
    return 1 if failed else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", default=[], help="run only this scenario (repeatable)")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--timeout", type=float, default=60.0, help="per-scenario bound in seconds")
    p.add_argument("--trace", action="store_true",
                   help="run the server with EPLOOP_TRACE=1 and show its trace for failed scenarios")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- server command ({port} becomes 0)")
    a = p.parse_args()
    if a.list:
        for name, (doc, _) in SCENARIOS.items():
            print(f"{name:24s} {doc}")
        return 0
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not command:
        p.error("give the server command after --")
    command = [arg.replace("{port}", "0") for arg in command]
    unknown = [n for n in a.only if n not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s): {', '.join(unknown)}; see --list")
    return run(command, a.only or list(SCENARIOS), a.timeout, a.trace)


if __name__ == "__main__":
    sys.exit(main())
