"""echo_server: a telnet session like seed 000's, resets, and flow control."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time


def test_telnet_session_ends_with_one_peer_eof_and_no_spin(run_example, h):
    server = run_example("echo_server")
    client = h.connect(server.port)
    (conn_id,) = server.wait_accepts(1)
    accept = server.accepts()[0]
    assert accept == (conn_id, "127.0.0.1", client.getsockname()[1])

    # What the seed's user typed: two lines, each echoed back whole (telnet sends CRLF).
    for line in (b"123456\r\n", b"56\r\n"):
        client.sendall(line)
        assert h.recv_exact(client, len(line)) == line

    # telnet> q : the client closes its socket (FIN).
    client.close()
    assert server.wait_close(conn_id) == ("peer_eof", 0)

    # The seed saw endless EPOLLIN with empty reads here. The server must go quiet instead:
    # no second close, no further lines, and (almost) no CPU while idle.
    after_close = server.mark()
    ticks_before = server.cpu_ticks()
    time.sleep(1.0)
    ticks_used = server.cpu_ticks() - ticks_before
    assert ticks_used < 5, f"server burned {ticks_used} ticks in 1 s idle after the close"
    assert server.lines[after_close:] == [], server.log()
    assert server.closes() == [(conn_id, "peer_eof", 0)]

    server.send_signal(2)
    assert server.wait_exit() == 0, server.log()


def test_reset_by_peer_is_peer_reset(run_example, h):
    server = run_example("echo_server")
    client = h.connect(server.port)
    (conn_id,) = server.wait_accepts(1)
    client.sendall(b"ping\n")
    assert h.recv_exact(client, 5) == b"ping\n"
    h.reset_close(client)
    reason, err = server.wait_close(conn_id)
    assert (reason, err) == ("peer_reset", errno.ECONNRESET), server.log()


def test_reset_with_unread_data_is_one_close(run_example, h):
    """RST while the server still has our bytes to read: one close line, reason peer_reset."""
    server = run_example("echo_server")
    client = h.connect(server.port)
    (conn_id,) = server.wait_accepts(1)
    client.sendall(b"x" * 100_000)
    h.reset_close(client)
    reason, _err = server.wait_close(conn_id)
    assert reason == "peer_reset", server.log()
    time.sleep(0.3)
    assert len([c for c in server.closes() if c[0] == conn_id]) == 1


def test_many_clients_each_closed_once(run_example, h):
    server = run_example("echo_server")
    clients = [h.connect(server.port) for _ in range(20)]
    ids = server.wait_accepts(20)
    for i, client in enumerate(clients):
        message = f"client {i}\n".encode()
        client.sendall(message)
        assert h.recv_exact(client, len(message)) == message
    for i, client in enumerate(clients):
        if i % 2:
            h.reset_close(client)
        else:
            client.close()
    server.wait_for(h.CLOSE_RE, count=20)
    reasons = {conn_id: reason for conn_id, reason, _ in server.closes()}
    assert set(reasons) == set(ids)
    assert sorted(reasons.values()) == ["peer_eof"] * 10 + ["peer_reset"] * 10


def echo_round_trip(h, port: int, size: int) -> None:
    """Send `size` random bytes while reading the echo concurrently; compare digests."""
    payload = os.urandom(size)
    client = h.connect(port, timeout=10)
    sender_error: list[BaseException] = []

    def send_all() -> None:
        try:
            client.sendall(payload)
        except BaseException as exc:  # reported by the main thread
            sender_error.append(exc)

    sender = threading.Thread(target=send_all, daemon=True)
    sender.start()
    echoed = h.recv_exact(client, size)
    sender.join(10)
    assert not sender.is_alive() and not sender_error, sender_error
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
    client.close()


def test_large_echo_with_flow_control(run_example, h):
    server = run_example("echo_server", "-q")
    echo_round_trip(h, server.port, 16 << 20)


def test_slow_reader_keeps_server_memory_bounded(run_example, h):
    """A peer that sends much and reads nothing: the server pauses reading instead of queueing."""
    server = run_example("echo_server", "-q")
    client = h.connect(server.port)
    client.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 3
    chunk = b"y" * 65536
    while time.monotonic() < deadline:
        try:
            sent += client.send(chunk)
        except BlockingIOError:
            time.sleep(0.05)  # buffers full both ways: the server stopped reading
            try:
                sent += client.send(chunk)
            except BlockingIOError:
                break
    rss_kib = int(
        next(
            line.split()[1]
            for line in open(f"/proc/{server.pid}/status")
            if line.startswith("VmRSS:")
        )
    )
    assert sent < 64 << 20, "the server kept reading although its echo could not be sent"
    assert rss_kib < 64 * 1024, f"server RSS {rss_kib} KiB after {sent} unread bytes"
    client.setblocking(True)
    client.settimeout(h.TIMEOUT)
    received = 0
    while received < sent:  # drain: the server resumes reading and echoes everything
        data = client.recv(1 << 16)
        assert data, "EOF before all echoed bytes arrived"
        received += len(data)
    assert received == sent
    client.close()


def test_ipv6_listener_logs_the_ipv6_peer(run_example, h):
    server = run_example("echo_server", "--host", "::1")
    client = h.connect(server.port, host="::1")
    (conn_id,) = server.wait_accepts(1)
    assert server.accepts()[0] == (conn_id, "::1", client.getsockname()[1])
    client.sendall(b"six\n")
    assert h.recv_exact(client, 4) == b"six\n"
    client.close()
    assert server.wait_close(conn_id) == ("peer_eof", 0)
