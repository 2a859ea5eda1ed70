"""Issue 10's matrix in Python: every way a peer goes away × every thing a handler does in
on_data, in both trigger modes. Handlers are written as a user would, never wrapping a send in
``try``: every connection ends with exactly one on_close, no exception reaches the exception
handler except the one a handler raises on purpose (then exactly once, and its connection is
aborted), and the server still serves a new client afterwards."""

from __future__ import annotations

import socket
import struct
import tempfile
import threading
import time
from typing import Any

import pytest
from bindings_support import TIMEOUT, Events, LoopThread, connect, recv_exactly

import eploop
from eploop import CloseReason

PEERS = ["fin", "rst", "rst_unread", "rst_pending", "vanish"]
ACTIONS = ["send", "send_many", "sendv", "nocopy", "sendfile", "shutdown", "close", "raise"]
# What the sendfile action sends: 1 MiB, more than the socket takes at once.
BODY = tempfile.TemporaryFile()
BODY.write(b"b" * (1 << 20))
BODY.flush()


class Boom(Exception):
    """What the 'raise' handler raises."""


class Server(eploop.Handler):
    """The first connection performs the action under test; later ones echo."""

    action = "send"
    first: list[int] = []

    def __init__(self, events: Events) -> None:
        self.events = events

    def on_accept(self) -> None:
        if not Server.first:
            Server.first.append(self.conn.id)
        self.events.add("accept", self.conn.id)

    def on_data(self, data: bytes) -> None:
        if self.conn.id != Server.first[0]:
            self.conn.send(data)
            return
        action = Server.action
        if action == "send":
            self.conn.send(data)
            self.conn.send(b"more")
        elif action == "send_many":
            for _ in range(16):
                self.conn.send(b"r" * 65536)
        elif action == "sendv":
            for _ in range(4):
                self.conn.send_many([data, b"r" * 262144, b"!"])
        elif action == "nocopy":
            for _ in range(4):
                self.conn.send_nocopy(b"n" * 262144)
        elif action == "sendfile":
            for _ in range(4):
                self.conn.send_file(BODY, 0)
        elif action == "shutdown":
            self.conn.shutdown()
        elif action == "close":
            self.conn.close()
        elif action == "raise":
            raise Boom("the handler's own bug")

    def on_writable(self) -> None:
        self.conn.resume_reading()

    def on_close(self, reason: CloseReason, errno: int) -> None:
        self.events.add("close", self.conn.id, reason, errno)


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def act_as_peer(peer: str, port: int, events: Events) -> None:
    """Connects, sends, and goes away the way `peer` says; returns once the server closed it."""
    client = connect(port)
    events.wait_count("accept", 1)
    if peer == "rst_unread":
        def flood() -> None:
            client.settimeout(2)
            try:
                for _ in range(16):
                    client.sendall(b"f" * 262144)
            except OSError:
                pass
            reset(client)

        flooder = threading.Thread(target=flood)
        flooder.start()
        events.wait_count("close", 1)
        flooder.join(TIMEOUT)
        return
    client.sendall(b"hello")
    time.sleep(0.05)  # the server reads it and acts
    if peer == "fin":
        try:
            client.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may have reset it already ('raise')
        events.wait_count("close", 1)
        client.close()
    elif peer in ("rst", "rst_pending"):
        reset(client)  # rst_pending: its replies were never read, the server's queue is full
        events.wait_count("close", 1)
    elif peer == "vanish":
        events.wait_count("close", 1)  # the idle timeout ends it; the client stays silent
        client.close()


@pytest.mark.parametrize("edge", [False, True], ids=["level", "edge"])
@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("peer", PEERS)
def test_one_channel(peer: str, action: str, edge: bool) -> None:
    events = Events()
    Server.action, Server.first = action, []
    failures: list[dict[str, Any]] = []
    loop = eploop.Loop()
    loop.set_exception_handler(lambda _loop, context: failures.append(context))
    listener = loop.listen(("127.0.0.1", 0), lambda: Server(events), edge=edge)
    if peer == "vanish":
        listener.set_idle_timeout(0.3)
    runner = LoopThread(loop).start()
    try:
        act_as_peer(peer, listener.port, events)
        first = Server.first[0]
        closes = [c for c in events.of("close") if c[1] == first]
        assert len(closes) == 1, f"{peer} x {action}: closes {closes}"
        if action == "raise":
            assert len(failures) == 1, failures
            assert isinstance(failures[0]["exception"], Boom)
            assert closes[0][2] in (CloseReason.ABORT, CloseReason.PEER_RESET, CloseReason.PEER_EOF)
        else:
            assert failures == [], f"{peer} x {action}: a peer made something raise: {failures}"
        if peer == "vanish" and action in ("send", "send_many", "sendv", "nocopy", "sendfile"):
            assert closes[0][2] == CloseReason.TIMEOUT
        # Still serving.
        with connect(listener.port) as fresh:
            fresh.sendall(b"still there?")
            assert recv_exactly(fresh, 12) == b"still there?"
        assert runner.error is None and not runner.returned.is_set(), "run() ended"
    finally:
        runner.finish()
    assert runner.error is None, runner.error


SEND_VARIANTS = {
    "send": lambda conn, data: conn.send(data),
    "send_many": lambda conn, data: conn.send_many([data, b"!"]),
    "send_nocopy": lambda conn, data: conn.send_nocopy(bytes(data)),
    "send_file": lambda conn, data: conn.send_file(BODY, 0, 4096),
    "shutdown": lambda conn, data: conn.shutdown(),
    "pause_reading": lambda conn, data: conn.pause_reading(),
}


@pytest.mark.parametrize("edge", [False, True], ids=["level", "edge"])
@pytest.mark.parametrize("variant", list(SEND_VARIANTS))
def test_data_and_reset_in_one_step(variant: str, edge: bool) -> None:
    """The bytes and the reset behind them arrive before one step: the library reads the bytes,
    meets the reset and decides the close within that ep_poll(), so while on_data runs the id
    is already ended in C. Every call the handler makes must still succeed quietly (one
    channel); its on_close follows, once, with the peer's reason."""
    calls: list[Any] = []
    closes: list[tuple[CloseReason, int]] = []
    failures: list[dict[str, Any]] = []

    class Replier(eploop.Handler):
        def on_data(self, data: bytes) -> None:
            calls.append(SEND_VARIANTS[variant](self.conn, data))
            calls.append(self.conn.send(b"after"))

        def on_close(self, reason: CloseReason, errno: int) -> None:
            closes.append((reason, errno))

    with eploop.Loop() as loop:
        loop.set_exception_handler(lambda _loop, context: failures.append(context))
        listener = loop.listen(("127.0.0.1", 0), Replier, edge=edge)
        client = connect(listener.port)
        deadline = time.monotonic() + TIMEOUT
        while loop.stats().open < 2 and time.monotonic() < deadline:
            loop.run_once(0.05)  # the accept
        assert loop.stats().open == 2
        client.sendall(b"hello")
        reset(client)
        time.sleep(0.05)  # both are in the server's socket before the next step
        loop.run_once(0.5)
        while not closes and time.monotonic() < deadline:
            loop.run_once(0.05)
        assert failures == [], f"{variant}: the peer's reset made a call raise: {failures}"
        # The send variants say "stop producing" (the bytes are discarded); the others return None.
        assert calls == [None if variant in ("shutdown", "pause_reading") else False, False], calls
        assert closes == [(CloseReason.PEER_RESET, closes[0][1])], closes
