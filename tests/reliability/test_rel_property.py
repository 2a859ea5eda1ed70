"""Property test: random sequences of peer actions (send, read, SHUT_WR, FIN, RST) and server-side
calls driven in-band (WRITE, CLOSE, ABORT, SHUTWR, CLOSEOTHERS, PAUSE/RESUME), in either trigger
mode, optionally with random short reads/writes, EAGAIN storms, EINTR and shrunken epoll batches
injected underneath, never break the oracle: one close per connection, nothing after it, no
nesting, every byte sent delivered unless the server ended the connection itself, and what each
peer received is an exact prefix of the server's output stream."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relharness import Server, build, first_mismatch, pattern, rst_close, start_cmd_server, unsent

MAX_CONNS = 4

conn_index = st.integers(0, MAX_CONNS - 1)
action = st.one_of(
    st.tuples(st.just("open")),
    st.tuples(st.just("send"), conn_index, st.integers(2, 100_000)),
    st.tuples(st.just("write"), conn_index, st.integers(0, 3_000_000)),
    st.tuples(st.just("read"), conn_index),
    st.tuples(st.sampled_from(["shutwr", "fin", "rst", "srv_close", "srv_abort", "srv_shut", "closeothers",
                               "pause", "resumeall"]), conn_index),
)
fault_profile = st.one_of(
    st.none(),
    st.fixed_dictionaries({
        "FS_SEED": st.integers(1, 2**31).map(str),
        "FS_SHORT_WRITE": st.sampled_from(["0", "5", "30"]),
        "FS_SHORT_READ": st.sampled_from(["0", "5", "30"]),
        "FS_EAGAIN": st.sampled_from(["0", "2", "10"]),
        "FS_EINTR": st.sampled_from(["0", "3"]),
        "FS_EPOLL_SHRINK": st.sampled_from(["0", "50"]),
    }),
)


@dataclass
class Peer:
    sock: socket.socket
    sent: int = 0
    # Bytes our RST may have dropped: still unacknowledged when we reset. Unacknowledged is not
    # undelivered: a server that aborts right after reading them never ACKs them.
    unacked_at_rst: int = 0
    received: bytearray = field(default_factory=bytearray)
    shut: bool = False          # we sent FIN (SHUT_WR)
    gone: bool = False          # socket closed on our side
    ended_by_server: bool = False  # CLOSE/ABORT/CLOSEOTHERS may discard what we send afterwards
    cid: int = 0


def close_peer(p: Peer) -> None:
    """Our close(). With server output still unread the kernel turns it into an RST, which drops
    what we sent and the server's kernel has not acknowledged yet: count those bytes as an
    RST's (they bound what was delivered from below, as for an explicit rst)."""
    p.unacked_at_rst += unsent(p.sock)
    p.sock.close()
    p.gone = True


def drain(p: Peer, wait: float) -> None:
    """Read what is available within `wait` seconds (the server's output stream)."""
    if p.gone:
        return
    p.sock.settimeout(wait)
    try:
        while True:
            b = p.sock.recv(1 << 20)
            if not b:
                return
            p.received += b
            p.sock.settimeout(0.01)
    except (socket.timeout, BlockingIOError):
        return
    except OSError:
        return


def send(p: Peer, data: bytes) -> None:
    if p.gone or p.shut:
        return
    p.sock.settimeout(0.5)
    try:
        n = p.sock.send(data)  # one send: never block the test on a server that is not reading
        p.sent += n
    except (socket.timeout, BlockingIOError):
        pass
    except OSError:
        p.ended_by_server = True


def run_case(bins, edge: bool, faults, actions) -> None:
    srv: Server = start_cmd_server(bins, edge=edge, faults=faults)
    peers: list[Peer] = []
    closeothers_sent = False
    try:
        for act in actions:
            kind = act[0]
            if kind == "open":
                if len(peers) < MAX_CONNS:
                    s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
                    p = Peer(s)
                    p.cid = srv.conn_id(s)
                    peers.append(p)
                continue
            if not peers:
                continue
            p = peers[act[1] % len(peers)]
            if kind == "send":
                send(p, b"#" + b"x" * (act[2] - 2) + b"\n")
            elif kind == "write":
                send(p, b"WRITE %d\n" % act[2])
            elif kind == "read":
                drain(p, 0.05)
            elif kind == "shutwr" and not p.gone and not p.shut:
                try:
                    p.sock.shutdown(socket.SHUT_WR)
                except OSError:  # the server already reset it
                    p.ended_by_server = True
                p.shut = True
            elif kind == "fin" and not p.gone:
                drain(p, 0.01)
                close_peer(p)
            elif kind == "rst" and not p.gone:
                p.unacked_at_rst += rst_close(p.sock, settle=1)
                p.gone = True
            elif kind in ("srv_close", "srv_abort"):
                send(p, b"CLOSE\n" if kind == "srv_close" else b"ABORT\n")
                p.ended_by_server = True
            elif kind == "closeothers":
                # When the server gets to it (maybe only after a RESUMEALL, or after accepting
                # peers opened later) is not known: any peer may lose what it sent.
                send(p, b"CLOSEOTHERS\n")
                closeothers_sent = True
            elif kind == "srv_shut":
                send(p, b"SHUTWR\n")
            elif kind == "pause":
                send(p, b"PAUSE\n")
            elif kind == "resumeall":
                send(p, b"RESUMEALL\n")
        # Wind down: let output arrive, end every peer, resume anything paused (a paused
        # connection notices its peer's FIN only once reading resumes). A RESUMEALL can itself
        # be cut off by a pending CLOSEOTHERS, so repeat it.
        for p in peers:
            drain(p, 0.05)
            if not p.gone:
                close_peer(p)
        for attempt in range(4):
            ctl = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            ctl.sendall(b"RESUMEALL\n")
            ctl.close()
            try:
                srv.wait_until(lambda o: not o.open_ids(), 5 if attempt < 3 else 20, "every connection closed")
                break
            except AssertionError:
                if attempt == 3:
                    raise
        srv.finish()
    finally:
        srv.kill()
        for p in peers:
            if not p.gone:
                p.sock.close()
    for p in peers:
        rec = srv.oracle.conns[p.cid]
        assert rec.bytes_in <= p.sent, f"server delivered {rec.bytes_in} bytes, peer sent {p.sent}"
        if not p.ended_by_server and not closeothers_sent:
            assert p.sent - p.unacked_at_rst <= rec.bytes_in, \
                f"id {p.cid}: delivered {rec.bytes_in} of {p.sent} ({rec.close_reason}); {rec.lines[-4:]}"
        bad = first_mismatch(bytes(p.received), pattern(0, len(p.received)))
        assert bad == -1, f"id {p.cid}: received stream differs from the server's output at byte {bad}"


_BINS: dict = {}


@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(edge=st.booleans(), faults=fault_profile, actions=st.lists(action, min_size=1, max_size=30))
def test_random_peer_and_server_actions_keep_the_oracle(edge, faults, actions) -> None:
    if not _BINS:
        _BINS.update(build())
    run_case(_BINS, edge, faults, [("open",)] + actions)
