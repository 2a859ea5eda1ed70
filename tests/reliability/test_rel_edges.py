"""Edges of the read path: out-of-band data, and peers leaving while the server has paused reading.
None may spin the CPU or lose the close."""

from __future__ import annotations

import socket
import time

import pytest

from relharness import connect, cpu_during, rst_close


def test_oob_data_does_not_spin(server, mode) -> None:
    srv = server(edge=mode == "edge")
    sock = connect(srv.port)
    cid = srv.conn_id(sock)
    sock.sendall(b"SINK\n")
    for _ in range(20):
        sock.send(b"urgent!", socket.MSG_OOB)  # the last byte of each is out of band
    sock.sendall(b"tail")
    srv.wait_until(lambda o: o.conns[cid].bytes_in >= 5 + 20 * 6 + 4, 10, "inline bytes delivered")
    cpu = cpu_during(srv.pid, 1.0)
    assert cpu < 0.1, f"server used {cpu:.2f}s CPU in 1s after urgent data"
    sock.close()
    rec = srv.wait_closed(cid)
    assert rec.close_reason == "peer_eof"
    assert 5 + 20 * 6 + 4 <= rec.bytes_in <= 5 + 20 * 7 + 4
    srv.finish()


def test_reset_while_reading_paused_still_closes(server, mode) -> None:
    srv = server(edge=mode == "edge")
    sock = connect(srv.port)
    cid = srv.conn_id(sock)
    sock.sendall(b"PAUSE\n")
    srv.wait_for(lambda l: l.startswith(f"cmd {cid} PAUSE"), 5, "PAUSE")
    sock.sendall(b"#" * 5000 + b"\n")
    rst_close(sock)
    rec = srv.wait_closed(cid, timeout=5)
    assert rec.close_reason == "peer_reset", rec.lines[-3:]
    assert rec.bytes_in == 6 + 5001, "bytes that arrived before the RST were not delivered"
    assert cpu_during(srv.pid, 0.5) < 0.05
    srv.finish()


def test_fin_while_reading_paused_waits_without_spinning(server, mode) -> None:
    srv = server(edge=mode == "edge")
    sock = connect(srv.port)
    cid = srv.conn_id(sock)
    sock.sendall(b"PAUSE\n")
    srv.wait_for(lambda l: l.startswith(f"cmd {cid} PAUSE"), 5, "PAUSE")
    sock.sendall(b"#" * 3000 + b"\n")
    sock.shutdown(socket.SHUT_WR)
    time.sleep(0.2)
    cpu = cpu_during(srv.pid, 1.0)
    assert cpu < 0.1, f"server used {cpu:.2f}s CPU with a paused half-closed connection"
    ctl = connect(srv.port)
    ctl.sendall(b"RESUMEALL\n")
    rec = srv.wait_closed(cid, timeout=5)
    assert rec.close_reason == "peer_eof" and rec.bytes_in == 6 + 3001
    sock.close()
    ctl.close()
    srv.finish()


@pytest.mark.parametrize("queued", [False, True], ids=["queue-empty", "queue-8MiB"])
def test_reset_with_more_than_the_read_budget_unread_delivers_everything(server, mode, queued) -> None:
    """Linux hands over every queued byte before ECONNRESET, however many: the loop must not stop
    after one read pass's worth and close (data before close), whether it learns of the reset from
    EPOLLERR or from a failed send."""
    srv = server(edge=mode == "edge")
    sock = connect(srv.port, rcvbuf=64 * 1024 if queued else None)
    cid = srv.conn_id(sock)
    head = b"RCVBUF 8388608\n" + (b"WRITE 8388608\n" if queued else b"") + b"SLEEP 600\nSINK\n"
    sock.sendall(head)
    srv.wait_for(lambda l: l.startswith(f"cmd {cid} RCVBUF 0"), 5, "RCVBUF")
    time.sleep(0.1)  # asleep inside on_data now
    sock.sendall(b"x" * 2_000_000)
    dropped = rst_close(sock, settle=3)
    assert dropped == 0, "the server's kernel did not take the payload"
    rec = srv.wait_closed(cid, timeout=10)
    assert rec.close_reason == "peer_reset"
    assert rec.bytes_in == len(head) + 2_000_000, \
        f"delivered {rec.bytes_in} of {len(head) + 2_000_000} bytes before on_close"
    srv.finish()
