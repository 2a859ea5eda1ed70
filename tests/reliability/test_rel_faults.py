"""Fault injection through the LD_PRELOAD shim (faultshim.c): short writes and reads of 1-7 bytes,
EAGAIN storms, EINTR, shrunken epoll batches, resets mid-stream and EMFILE from accept. Echoing
1 MiB must stay byte-exact and never stall; every connection still closes exactly once."""

from __future__ import annotations

import random
import socket
import threading
import time
import zlib
from pathlib import Path

import pytest

from relharness import connect, cpu_during, first_mismatch, offer, pattern, serve_or_refuse

MIB = 1024 * 1024

PROFILES = {
    "short-io": {"FS_SHORT_WRITE": "30", "FS_SHORT_READ": "30"},
    "eagain-storms": {"FS_EAGAIN": "10", "FS_STORM": "16"},
    "eintr": {"FS_EINTR": "10", "FS_EPOLL_EINTR": "20"},
    "epoll-batch-of-1": {"FS_EPOLL_SHRINK": "60", "FS_SHORT_READ": "5"},
    "everything": {"FS_SHORT_WRITE": "10", "FS_SHORT_READ": "10", "FS_EAGAIN": "3", "FS_EINTR": "3",
                   "FS_EPOLL_EINTR": "5", "FS_EPOLL_SHRINK": "20"},
}


def read_stats(path: Path) -> dict[str, int]:
    text = path.read_text().strip().splitlines()[-1]
    return {k: int(v) for k, v in (kv.split("=") for kv in text.split())}


def echo_roundtrip(port: int, payload: bytes, seed: int, timeout: float = 60.0,
                   resets_expected: bool = False) -> tuple[bytes, str, float]:
    """Send payload in random-sized pieces while reading the echo; returns (echo, how, longest stall).
    A send error is re-raised unless resets_expected."""
    sock = connect(port)
    rng = random.Random(seed)
    send_error: list[BaseException] = []

    def sender() -> None:
        try:
            sock.sendall(b"ECHO\n")
            i = 0
            while i < len(payload):
                n = rng.choice((1, 7, 100, 4096, 65536, 200_000))
                sock.sendall(payload[i:i + n])
                i += n
            sock.shutdown(socket.SHUT_WR)
        except BaseException as e:  # reported by the main thread
            send_error.append(e)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    chunks = []
    longest_stall = 0.0
    last = time.monotonic()
    deadline = last + timeout
    how = "eof"
    while True:
        now = time.monotonic()
        if now > deadline:
            how = "timeout"
            break
        sock.settimeout(1.0)
        try:
            b = sock.recv(1 << 20)
        except socket.timeout:
            longest_stall = max(longest_stall, time.monotonic() - last)
            continue
        except ConnectionResetError:
            how = "reset"
            break
        if not b:
            break
        now = time.monotonic()
        longest_stall = max(longest_stall, now - last)
        last = now
        chunks.append(b)
    t.join(10)
    sock.close()
    if send_error and not resets_expected:
        raise send_error[0]
    return b"".join(chunks), how, longest_stall


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_echo_1mib_byte_exact_under_faults(server, mode, profile, tmp_path) -> None:
    stats = tmp_path / "faults.txt"
    faults = {"FS_SEED": str(zlib.crc32(f"{mode}/{profile}".encode())), "FS_STATS": str(stats), **PROFILES[profile]}
    srv = server(edge=mode == "edge", faults=faults)
    payload = pattern(12345, MIB)
    echo, how, stall = echo_roundtrip(srv.port, payload, seed=7)
    assert how == "eof", f"echo ended with {how} after {len(echo)} bytes"
    assert len(echo) == MIB and first_mismatch(echo, payload) == -1, \
        f"echo differs at byte {first_mismatch(echo, payload)} of {len(echo)}"
    assert stall < 10, f"no progress for {stall:.1f}s"
    srv.wait_until(lambda o: o.closes >= 1, 10, "close")
    srv.finish()
    counts = read_stats(stats)
    assert sum(v for k, v in counts.items() if k not in ("socket_calls", "injected_events")) > 0, counts


def test_reset_mid_stream_closes_each_connection_once(server, mode, tmp_path) -> None:
    stats = tmp_path / "faults.txt"
    srv = server(edge=mode == "edge", faults={"FS_SEED": "99", "FS_RESET": "1.5", "FS_SHORT_WRITE": "20",
                                              "FS_STATS": str(stats)})
    early = 0
    for i in range(20):
        payload = pattern(i * 1000, 256 * 1024)
        echo, how, _ = echo_roundtrip(srv.port, payload, seed=i, timeout=30, resets_expected=True)
        assert how in ("eof", "reset"), how
        assert first_mismatch(echo, payload) == -1, "the echo is not a prefix of what was sent"
        if len(echo) < len(payload):
            early += 1
    srv.wait_until(lambda o: o.closes >= 20, 15, "20 closes")
    reasons = {c.close_reason for c in srv.oracle.conns.values()}
    srv.finish()
    counts = read_stats(stats)
    assert counts["resets"] > 0 and early > 0, (counts, early)
    assert "peer_reset" in reasons, reasons


def test_emfile_from_accept_is_survived_without_spinning(server, mode, tmp_path) -> None:
    """A faked EMFILE makes the loop shed the waiting connections (reset at once, no id) and keep
    serving: every client is served or refused promptly, none hangs, the loop does not spin."""
    stats = tmp_path / "faults.txt"
    srv = server(edge=mode == "edge", faults={"FS_SEED": "5", "FS_EMFILE": "30", "FS_STATS": str(stats)})
    cpu0 = srv.cpu_seconds()
    outcomes: dict[str, int] = {}
    for i in range(100):
        sock = offer(srv.port)
        outcome = serve_or_refuse([sock], time.monotonic() + 5)[sock] if sock else "refused"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if sock:
            sock.close()
    cpu = srv.cpu_seconds() - cpu0
    served = outcomes.get("served", 0)
    srv.wait_until(lambda o: o.closes >= served, 10, "closes of the served connections")
    assert outcomes.get("hanging", 0) == 0, outcomes
    assert served >= 30 and srv.oracle.accepts == served, (outcomes, srv.oracle.accepts)
    assert cpu_during(srv.pid, 0.5) < 0.1, "server busy while idle after EMFILE faults"
    srv.finish()
    assert read_stats(stats)["emfile"] > 0
    assert cpu < 3.0, f"{cpu:.2f}s CPU for 100 connections"
