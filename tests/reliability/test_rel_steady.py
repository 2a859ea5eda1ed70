"""The steady state of a connection costs one recv and one send per message, no epoll_ctl and
no heap allocation: a ping-pong window on one connection, after a warm-up, measured with
strace (system calls in the window, by timestamp) and with allocount.so (malloc & co. counted
in the server process, read before and after the window)."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from relharness import connect

ROUNDS = 2000
WARMUP = 200
MESSAGE = b"m" * 64


def ping_pong(sock, rounds: int) -> None:
    for _ in range(rounds):
        sock.sendall(MESSAGE)
        got = b""
        while len(got) < len(MESSAGE):
            chunk = sock.recv(len(MESSAGE) - len(got))
            assert chunk, "the server closed the connection"
            got += chunk
        assert got == MESSAGE


def test_one_recv_one_send_no_epoll_ctl(server, mode, tmp_path) -> None:
    if not shutil.which("strace"):
        pytest.fail("strace is not installed (CI must apt-get install strace)")
    trace = tmp_path / "trace.txt"
    srv = server("--echo", edge=mode == "edge",
                 wrapper=["strace", "-f", "-qq", "-ttt", "-e",
                          "trace=recvfrom,recvmsg,read,sendto,sendmsg,write,writev,epoll_ctl", "-o", str(trace)])
    sock = connect(srv.port)
    ping_pong(sock, WARMUP)
    start = time.time()
    ping_pong(sock, ROUNDS)
    end = time.time()
    sock.close()
    srv.wait_until(lambda o: o.closes >= 1, 10, "the connection's close")
    srv.finish()

    counts: dict[str, int] = {}
    for raw in open(trace, errors="replace"):
        parts = raw.split(None, 2)
        if len(parts) < 3 or "(" not in parts[2] or parts[2].startswith(("write(1,", "write(2,")):
            continue  # (the server's own log lines)
        try:
            ts = float(parts[1])
        except ValueError:
            continue
        if start <= ts <= end:
            call = parts[2].split("(", 1)[0]
            counts[call] = counts.get(call, 0) + 1
    recvs = counts.get("recvfrom", 0) + counts.get("recvmsg", 0) + counts.get("read", 0)
    sends = counts.get("sendto", 0) + counts.get("sendmsg", 0) + counts.get("write", 0) + counts.get("writev", 0)
    # The window's edges may cut one round trip of either side.
    assert ROUNDS - 2 <= sends <= ROUNDS + 2, f"{mode}: {sends} sends for {ROUNDS} messages: {counts}"
    assert ROUNDS - 2 <= recvs <= ROUNDS + 2, f"{mode}: {recvs} reads for {ROUNDS} messages: {counts}"
    assert counts.get("epoll_ctl", 0) == 0, f"{mode}: epoll_ctl in the steady state: {counts}"


def read_count(path: Path, pid: int) -> int:
    if path.exists():
        path.unlink()
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if path.exists():  # (written whole, then renamed into place)
            return int(path.read_text())
        time.sleep(0.01)
    raise AssertionError("allocount.so did not answer SIGUSR2")


def test_no_allocation_in_the_steady_state(server, bins, mode, tmp_path) -> None:
    counter = tmp_path / "allocations"
    srv = server("--echo", edge=mode == "edge",
                 env={"LD_PRELOAD": str(bins["allocount"]), "ALLOCOUNT_FILE": str(counter)})
    sock = connect(srv.port)
    ping_pong(sock, WARMUP)
    before = read_count(counter, srv.pid)
    ping_pong(sock, ROUNDS)
    after = read_count(counter, srv.pid)
    sock.close()
    srv.wait_until(lambda o: o.closes >= 1, 10, "the connection's close")
    srv.finish()
    assert before > 0, "allocount.so counted nothing: is it preloaded?"
    assert after - before == 0, f"{mode}: {after - before} allocations in {ROUNDS} round trips"
