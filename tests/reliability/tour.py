"""A short tour of cmd_server scenarios touching every close path, for runs under a memory checker
(valgrind memcheck, AddressSanitizer) where each scenario is slow: echo, graceful close with
unread request bytes, every peer close action with output queued, aborts from inside callbacks,
stale ids, and loop teardown with live connections."""

from __future__ import annotations

import socket
import time

from relharness import Server, connect, first_mismatch, pattern, recv_until_eof, rst_close


def tour(srv: Server, scale: float = 1.0) -> None:
    """Drive srv through the scenarios; raises AssertionError on a wrong byte or a missing close."""
    t = 30 * scale
    # Echo.
    s = connect(srv.port, timeout=t)
    payload = pattern(99, 200_000)
    s.sendall(b"ECHO\n" + payload)
    s.shutdown(socket.SHUT_WR)
    got, how = recv_until_eof(s, t)
    s.close()
    assert how == "eof" and got == payload, (how, len(got))
    # Graceful close with unread request bytes.
    s = connect(srv.port, timeout=t)
    s.sendall(b"WRITE 300000\nCLOSE\n" + b"j" * 30000)
    got, how = recv_until_eof(s, t)
    s.close()
    assert how == "eof" and got == pattern(0, 300000), (how, len(got))
    # Peer FIN / SHUT_WR / RST with output queued and input unread.
    for action in ("fin", "shutwr", "rst"):
        s = connect(srv.port, rcvbuf=32 * 1024, timeout=t)
        s.sendall(b"WRITE 2000000\nSLEEP 200\nSINK\n")
        time.sleep(0.05)
        s.sendall(b"u" * 20000)
        if action == "fin":
            s.close()
        elif action == "shutwr":
            s.shutdown(socket.SHUT_WR)
            got, how = recv_until_eof(s, t)
            s.close()
            assert how == "eof" and len(got) == 2000000 and first_mismatch(got, pattern(0, 2000000)) == -1
        else:
            rst_close(s)
    # Abort and close others from inside callbacks, with fd reuse.
    group = [connect(srv.port, timeout=t) for _ in range(10)]
    group[0].sendall(b"ABORTOTHERS REUSE\n")
    for g in group[1:]:
        recv_until_eof(g, t)
        g.close()
    group[0].close()
    # Close from inside on_writable (a small receive buffer makes ep_send report high water).
    w = connect(srv.port, rcvbuf=32 * 1024, timeout=t)
    w.sendall(b"ONWRITABLE close\nSTREAM 8000000\n")
    time.sleep(0.3 * scale)
    got, how = recv_until_eof(w, t)
    w.close()
    assert how == "eof" and first_mismatch(got, pattern(0, len(got))) == -1, (how, len(got))
    ctl = connect(srv.port, timeout=t)
    ctl.sendall(b"STALE\nONCLOSE closeothers\n")
    time.sleep(0.1)
    others = [connect(srv.port, timeout=t) for _ in range(3)]
    srv.wait_until(lambda o: o.accepts >= 20, t, "accepts")
    ctl.close()
    for o in others:
        recv_until_eof(o, t)
        o.close()
    srv.wait_until(lambda o: not o.open_ids() or all(o.conns[i].peer == "socketpair" for i in o.open_ids()),
                   t, "tour connections closed")
    # Teardown with live connections (the socketpairs above and these).
    live = [connect(srv.port, timeout=t) for _ in range(20)]
    live[0].sendall(b"WRITE 1000000\n")
    srv.wait_until(lambda o: o.accepts >= 40, t, "live accepts")
    srv.stop(timeout=60 * scale)
    for s in live:
        s.close()
