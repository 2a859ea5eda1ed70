"""Re-entrancy and lifetime: closing from inside every callback, closing other connections,
events already fetched for ids closed in the same batch, calls with stale ids, stopping the loop
from a callback."""

from __future__ import annotations

import socket
import time

from relharness import EP_ESTALE, connect, first_mismatch, pattern, recv_until_eof


def test_close_and_abort_inside_on_accept(server, mode) -> None:
    srv = server(edge=mode == "edge")
    ctl = connect(srv.port)
    ctl_id = srv.conn_id(ctl)

    def set_on_accept(spec: bytes) -> None:
        mark = len(srv.log)
        ctl.sendall(b"ONACCEPT %s\n" % spec)
        srv.wait_for(lambda l: l.startswith(f"cmd {ctl_id} ONACCEPT"), 5, "ONACCEPT", start=mark)

    for action, want_reason in (("close", "local"), ("abort", "abort")):
        set_on_accept(action.encode())
        sock = socket.socket()
        sock.settimeout(10)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        try:
            sock.connect(("127.0.0.1", srv.port))
            got, how = recv_until_eof(sock, 10)
        except ConnectionResetError:  # the RST can beat connect() home on loopback
            got, how = b"", "reset"
        sock.close()
        assert got == b""
        assert how == ("eof" if action == "close" else "reset"), how
        srv.wait_until(lambda o: port in o.by_peer_port, 5, "accept")
        assert srv.wait_closed(srv.oracle.by_peer_port[port]).close_reason == want_reason
    set_on_accept(b"write 100000")
    sock = connect(srv.port)
    cid = srv.conn_id(sock)
    got, how = recv_until_eof(sock, 10)
    assert how == "eof" and got == pattern(0, 100000), (how, len(got))
    assert srv.wait_closed(cid).close_reason == "local"
    set_on_accept(b"none")
    ctl.close()
    srv.finish()


def test_close_inside_on_writable(server, mode) -> None:
    srv = server(edge=mode == "edge")
    sock = connect(srv.port, rcvbuf=32 * 1024)
    cid = srv.conn_id(sock)
    sock.sendall(b"ONWRITABLE close\nSTREAM %d\n" % (32 * 1024 * 1024))
    time.sleep(0.3)  # the stream stops at the high-water mark; reading drains it -> on_writable
    got, how = recv_until_eof(sock, 30)
    sock.close()
    rec = srv.wait_closed(cid)
    assert rec.writable_events >= 1
    assert rec.close_reason == "local"
    queued = int([l for l in srv.lines_for(cid) if l.startswith("queued ")][-1].split()[2])
    assert how == "eof" and len(got) == queued, (how, len(got), queued)
    assert first_mismatch(got, pattern(0, len(got))) == -1
    srv.finish()


def test_abort_inside_on_writable(server, mode) -> None:
    srv = server(edge=mode == "edge")
    sock = connect(srv.port, rcvbuf=32 * 1024)
    cid = srv.conn_id(sock)
    sock.sendall(b"ONWRITABLE abort\nSTREAM %d\n" % (32 * 1024 * 1024))
    time.sleep(0.3)
    got, how = recv_until_eof(sock, 30)
    sock.close()
    assert srv.wait_closed(cid).close_reason == "abort"
    assert how in ("reset", "eof")
    assert first_mismatch(got, pattern(0, len(got))) == -1
    srv.finish()


def test_close_others_inside_on_close(server, mode) -> None:
    srv = server(edge=mode == "edge")
    a = connect(srv.port)
    aid = srv.conn_id(a)
    others = [connect(srv.port) for _ in range(5)]
    oids = [srv.conn_id(s) for s in others]
    a.sendall(b"ONCLOSE closeothers\n")
    srv.wait_for(lambda l: l.startswith(f"cmd {aid} ONCLOSE"), 5, "ONCLOSE")
    a.close()
    assert srv.wait_closed(aid).close_reason == "peer_eof"
    for s, oid in zip(others, oids):
        got, how = recv_until_eof(s, 10)
        s.close()
        assert how == "eof" and got == b""
        assert srv.wait_closed(oid).close_reason == "local"
    srv.finish()


def test_calls_on_own_id_inside_on_close_fail_cleanly(server) -> None:
    srv = server()
    a = connect(srv.port)
    aid = srv.conn_id(a)
    a.sendall(b"ONCLOSE self\n")
    srv.wait_for(lambda l: l.startswith(f"cmd {aid} ONCLOSE"), 5, "ONCLOSE")
    a.close()
    srv.wait_closed(aid)
    line = srv.wait_for(lambda l: l.startswith(f"cmd {aid} self "), 5, "self calls")
    results = dict(kv.split("=") for kv in line.split()[3:])
    assert all(int(v) < 0 for v in results.values()), f"calls on a closing id succeeded: {line}"
    srv.finish()


def test_close_others_inside_on_data(server, mode) -> None:
    srv = server(edge=mode == "edge")
    socks = [connect(srv.port) for _ in range(10)]
    ids = [srv.conn_id(s) for s in socks]
    socks[0].sendall(b"CLOSEOTHERS\nCLOSE\n")
    for s, cid in zip(socks, ids):
        got, how = recv_until_eof(s, 10)
        s.close()
        assert how == "eof" and got == b""
        assert srv.wait_closed(cid).close_reason == "local"
    srv.finish()


def test_first_callback_of_a_batch_aborts_the_other_49(server, mode) -> None:
    """50 connections become ready in one epoll batch (the loop is asleep inside a callback
    meanwhile); whichever is dispatched first aborts the other 49 and opens new fds that may
    take their numbers. No event fetched for the 49 may reach anyone."""
    srv = server(edge=mode == "edge")
    ctl = connect(srv.port)
    ctl_id = srv.conn_id(ctl)
    socks = [connect(srv.port) for _ in range(50)]
    ids = [srv.conn_id(s) for s in socks]
    ctl.sendall(b"SLEEP 500\n")
    time.sleep(0.1)
    for s in socks:
        s.sendall(b"ABORTOTHERS REUSE\n")
    srv.wait_until(lambda o: sum(o.conns[i].closes for i in ids + [ctl_id]) >= 50, 10, "50 closes")
    time.sleep(0.2)  # a wrongly dispatched stale event would show up now
    survivors = [i for i in ids if srv.record(i).closes == 0]
    dispatched = [i for i in ids if srv.record(i).data_events > 0]
    assert len(survivors) == 1 and dispatched == survivors, \
        f"{len(dispatched)} of the batch got on_data, {len(survivors)} survived: events for aborted ids leaked"
    aborted = [i for i in ids if i not in survivors]
    assert all(srv.record(i).close_reason == "abort" for i in aborted)
    assert srv.record(ctl_id).close_reason == "abort"
    for s, cid in zip(socks, ids):
        if cid not in survivors:
            assert recv_until_eof(s, 5)[1] == "reset"
        s.close()
    # The socketpairs registered in that callback must see nothing until the loop is freed.
    with srv._cond:
        registered = [c for c in srv.oracle.conns.values() if c.peer == "socketpair"]
    assert len(registered) >= 49
    assert all(c.data_events == 0 and c.closes == 0 for c in registered)
    # The trap is only exercised if new fds took old numbers while the batch was in flight
    # (eploop closes an aborted fd at once). If it ever defers closing, revisit this check.
    closing_fds = {l.split()[2] for l in srv.log if l.startswith("closing ")}
    registered_fds = {l.split()[2] for l in srv.log if l.startswith("register ")}
    assert closing_fds & registered_fds, "no fd number was reused inside the batch"
    ctl.close()
    srv.finish()
    assert all(c.close_reason == "loop_freed" for c in registered)


def test_calls_with_stale_ids_return_estale(server) -> None:
    srv = server()
    for _ in range(5):
        s = connect(srv.port)
        cid = srv.conn_id(s)
        s.close()
        srv.wait_closed(cid)
    ctl = connect(srv.port)
    ctl.sendall(b"STALE\n")
    srv.wait_until(lambda o: len(o.stale_results) >= 5, 5, "stale results")
    assert all(l.split()[2] == "ok" for l in srv.oracle.stale_results), srv.oracle.stale_results
    assert str(EP_ESTALE) in srv.oracle.stale_results[0]
    ctl.close()
    srv.finish()


def test_stop_from_inside_a_callback(server, mode) -> None:
    srv = server(edge=mode == "edge")
    idle = [connect(srv.port) for _ in range(5)]
    ids = [srv.conn_id(s) for s in idle]
    ctl = connect(srv.port)
    ctl.sendall(b"STOP\n")
    assert srv.wait_exit(10) == 0
    for s in idle + [ctl]:
        got, how = recv_until_eof(s, 5)
        assert how in ("eof", "reset"), how
        s.close()
    assert all(srv.record(i).close_reason == "loop_freed" for i in ids)
    srv.finish()


def test_half_close_mode_sends_response_after_peer_eof(server, mode) -> None:
    srv = server("--half-close", edge=mode == "edge")
    sock = connect(srv.port)
    cid = srv.conn_id(sock)
    sock.sendall(b"WRITE 300000\n")
    sock.shutdown(socket.SHUT_WR)
    got, how = recv_until_eof(sock, 10)
    sock.close()
    assert how == "eof" and got == pattern(0, 300000)
    rec = srv.wait_closed(cid)
    assert rec.eof_seen, "EP_HALF_CLOSE must report the peer's EOF as on_data(NULL, 0)"
    assert rec.close_reason == "local"
    srv.finish()
