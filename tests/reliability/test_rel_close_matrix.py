"""The close matrix: peer action {FIN, SHUT_WR, RST, RST after FIN} x {nothing unread, 64 KiB unread
at the server} x {output queue empty, 8 MiB queued} x {level, edge}. Each cell: exactly one close
with the right reason, every byte the peer sent delivered before it, and what the peer read is an
exact prefix of what the server queued."""

from __future__ import annotations

import socket
import time

import pytest

from relharness import (ECONNRESET, EPIPE, connect, first_mismatch, pattern, recv_exact, recv_until_eof, rst_close,
                        start_cmd_server)

QUEUED = 8 * 1024 * 1024
UNREAD = 64 * 1024
PREFIX_READ = 10_000

# Expected close reasons (with errno) per action; see README.md for why each is what Linux does.
RESET = {("peer_reset", ECONNRESET), ("peer_reset", EPIPE)}
EOF = {("peer_eof", 0)}


def expected(action: str, queued: bool) -> set[tuple[str, int]]:
    if action == "fin":
        # close() with bytes still unread in the peer's receive buffer sends RST, not FIN.
        return RESET if queued else EOF
    if action == "shutwr":
        return EOF
    if action == "rst":
        return RESET
    return EOF | RESET  # RST after FIN: whichever the server saw first


@pytest.fixture(scope="module", params=["level", "edge"])
def mserver(request, bins):
    srv = start_cmd_server(bins, edge=request.param == "edge")
    yield srv
    srv.finish()


@pytest.mark.parametrize("queued", [False, True], ids=["queue-empty", "queue-8MiB"])
@pytest.mark.parametrize("unread", [False, True], ids=["read-all", "64KiB-unread"])
@pytest.mark.parametrize("action", ["fin", "shutwr", "rst", "rst_after_fin"])
def test_close_matrix(mserver, action: str, unread: bool, queued: bool) -> None:
    srv = mserver
    sock = connect(srv.port, rcvbuf=64 * 1024 if queued else None)
    cid = srv.conn_id(sock)
    sent = 0

    def send(data: bytes) -> None:
        nonlocal sent
        sock.sendall(data)
        sent += len(data)

    if queued:
        send(b"WRITE %d\n" % QUEUED)
        line = srv.wait_for(lambda l: l.startswith(f"queued {cid} "), 10, "WRITE queued")
        assert line.split()[2] == str(QUEUED), line
    if unread:
        # The server sleeps inside on_data; the payload and the close both arrive meanwhile, so
        # the next wakeup sees data + EOF/RST together (RDHUP/HUP with unread data).
        send(b"SLEEP 400\nSINK\n")
        time.sleep(0.1)
        send(b"u" * UNREAD)
    else:
        send(b"SINK\n" + b"r" * 1000)
        srv.wait_until(lambda o: o.conns[cid].bytes_in >= sent, 10, "payload read")

    received = recv_exact(sock, PREFIX_READ) if queued else b""
    how = "not read"
    if action == "fin":
        sock.close()
    elif action == "shutwr":
        sock.shutdown(socket.SHUT_WR)
        rest, how = recv_until_eof(sock, 30)
        received += rest
        sock.close()
    elif action == "rst":
        rst_close(sock)
    else:
        sock.shutdown(socket.SHUT_WR)
        time.sleep(0.05)
        rst_close(sock)

    rec = srv.wait_closed(cid, timeout=15)
    assert (rec.close_reason, rec.close_err) in expected(action, queued), srv.lines_for(cid)[-6:]
    assert rec.bytes_in == sent, f"server delivered {rec.bytes_in} of the {sent} bytes the peer sent"
    assert first_mismatch(received, pattern(0, len(received))) == -1, "peer received bytes out of order"
    if action == "shutwr":
        assert how == "eof", f"after SHUT_WR the peer must get everything and a FIN, got {how}"
        assert len(received) == (QUEUED if queued else 0)
    assert not srv.oracle.violations, srv.oracle.violations
