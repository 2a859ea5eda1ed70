"""Graceful close is graceful: with request bytes left unread, ep_close still delivers every queued
byte and a FIN (a plain close() would turn into RST and destroy the queued output); the linger
bound ends a close the peer never lets finish."""

from __future__ import annotations

import time

from relharness import connect, first_mismatch, pattern, recv_until_eof

MIB = 1024 * 1024


def test_unread_request_bytes_do_not_turn_close_into_reset(server, mode) -> None:
    srv = server(edge=mode == "edge")
    sock = connect(srv.port)
    cid = srv.conn_id(sock)
    # The junk after CLOSE is never read by the application: it sits in the receive queue.
    sock.sendall(b"WRITE %d\nCLOSE\n" % MIB + b"j" * (64 * 1024))
    time.sleep(0.2)
    got, how = recv_until_eof(sock, 30)
    sock.close()
    assert how == "eof", f"peer saw {how} after {len(got)} bytes: graceful close must end with FIN"
    assert len(got) == MIB and first_mismatch(got, pattern(0, MIB)) == -1
    rec = srv.wait_closed(cid)
    assert (rec.close_reason, rec.close_err) == ("local", 0)
    srv.finish()


def test_bytes_arriving_after_fin_are_drained(server, mode) -> None:
    srv = server(edge=mode == "edge")
    sock = connect(srv.port, rcvbuf=64 * 1024)
    cid = srv.conn_id(sock)
    sock.sendall(b"WRITE %d\nCLOSE\n" % (4 * MIB))
    got = b""
    while len(got) < 100_000:
        got += sock.recv(65536)
    # While the server is still flushing (and after its FIN), keep sending: the loop must drain
    # and discard these instead of answering them with RST.
    for _ in range(8):
        sock.sendall(b"k" * 8192)
    rest, how = recv_until_eof(sock, 30)
    got += rest
    sock.close()
    assert how == "eof", f"peer saw {how} after {len(got)} bytes"
    assert len(got) == 4 * MIB and first_mismatch(got, pattern(0, 4 * MIB)) == -1
    assert srv.wait_closed(cid).close_reason == "local"
    srv.finish()


def test_slow_reader_still_gets_everything_after_close(server) -> None:
    srv = server()
    sock = connect(srv.port, rcvbuf=32 * 1024)
    cid = srv.conn_id(sock)
    sock.sendall(b"WRITE %d\nCLOSE\n" % (2 * MIB))
    time.sleep(1.0)  # nothing read for a while; the default linger (5 s) is not exceeded
    got, how = recv_until_eof(sock, 30)
    sock.close()
    assert how == "eof" and len(got) == 2 * MIB and first_mismatch(got, pattern(0, 2 * MIB)) == -1
    assert srv.wait_closed(cid).close_reason == "local"
    srv.finish()


def test_linger_bounds_a_close_the_peer_never_lets_finish(server, mode) -> None:
    srv = server("--linger", "300", edge=mode == "edge")
    base_fds = srv.fd_count()
    sock = connect(srv.port, rcvbuf=16 * 1024)
    cid = srv.conn_id(sock)
    t0 = time.monotonic()
    sock.sendall(b"WRITE %d\nCLOSE\n" % (16 * MIB))
    rec = srv.wait_closed(cid, timeout=10)
    elapsed = time.monotonic() - t0
    # The flush cannot finish (the peer never reads): the close must still come, bounded by linger.
    assert rec.close_reason == "timeout", srv.lines_for(cid)[-4:]
    assert elapsed < 5, f"close took {elapsed:.1f}s with --linger 300"
    deadline = time.monotonic() + 5
    while srv.fd_count() > base_fds and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.fd_count() == base_fds, "the socket fd was not released after the linger timeout"
    sock.close()
    srv.finish()
