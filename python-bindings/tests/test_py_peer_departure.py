"""A peer never raises (issue 10): servers written as the README shows them, with no ``try``
around ``send()``, survive every way a client can leave, and keep serving the others.

These need the library's one-channel contract (``ep_send`` returns 1 once the peer is gone).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
from bindings_support import TIMEOUT, Events, connect, recv_exactly, reset, serving

import eploop
from eploop import CloseReason

MIB = 1 << 20
PEER_GONE = (CloseReason.PEER_RESET, CloseReason.ERROR, CloseReason.PEER_EOF)


class Echo(eploop.Handler):
    """The README's echo server, recording its lifecycle."""

    def __init__(self, events: Events) -> None:
        self.events = events

    def on_accept(self) -> None:
        self.events.add("accept", self.conn.id)

    def on_data(self, data: bytes) -> None:
        self.conn.send(data)

    def on_close(self, reason: CloseReason, errno: int) -> None:
        self.events.add("close", self.conn.id, reason, errno)


class FlowEcho(Echo):
    """The flow-controlled echo of examples/echo_server.py."""

    def on_data(self, data: bytes) -> None:
        if not self.conn.send(data):
            self.conn.pause_reading()

    def on_writable(self) -> None:
        self.conn.resume_reading()


def still_serving(port: int) -> None:
    with connect(port) as client:
        client.sendall(b"are you there?")
        assert recv_exactly(client, 14) == b"are you there?"


def flood_then_reset(port: int, size: int) -> None:
    """Send ``size`` bytes without reading a single one back, then reset."""
    client = connect(port)
    client.sendall(b"\x5a" * size)
    time.sleep(0.05)  # let the server read (and answer into its queue) part of it
    reset(client)


@pytest.mark.parametrize("edge", [False, True], ids=["level", "edge"])
@pytest.mark.parametrize("handler", [Echo, FlowEcho], ids=["echo", "flow"])
def test_a_flooding_client_that_resets_ends_only_itself(edge: bool, handler: Any) -> None:
    events = Events()
    with serving(lambda: handler(events), edge=edge) as server, connect(server.port) as other:
        other.sendall(b"before")
        assert recv_exactly(other, 6) == b"before"
        flooders = [
            threading.Thread(target=flood_then_reset, args=(server.port, size))
            for size in (4 * MIB, 6 * MIB, 300_000)
        ]
        for flooder in flooders:
            flooder.start()
        for flooder in flooders:
            flooder.join(TIMEOUT)
        events.wait_count("close", 3)
        other.sendall(b"after")  # the first client was served all along
        assert recv_exactly(other, 5) == b"after"
        still_serving(server.port)
        assert server.failures == []  # no handler raised (serving() would raise it anyway)
    closes = events.of("close")
    assert len({c[1] for c in closes}) == len(closes), f"an id closed twice: {closes}"
    assert all(c[2] in PEER_GONE for c in closes[:3]), closes


@pytest.mark.parametrize("edge", [False, True], ids=["level", "edge"])
def test_a_reset_while_output_is_pending(edge: bool) -> None:
    """The server has megabytes queued for a client that stopped reading and resets; a timer
    keeps sending to every connection it knows, the dead one too: never an exception."""
    events = Events()
    conns: list[eploop.Connection] = []

    class Producer(Echo):
        def on_accept(self) -> None:
            super().on_accept()
            if not conns and not events.of("close"):  # the first client only
                conns.append(self.conn)
                self.conn.send(b"x" * (16 * MIB))  # more than the kernel takes: queued

        def on_close(self, reason: CloseReason, errno: int) -> None:
            super().on_close(reason, errno)
            if self.conn in conns:
                conns.remove(self.conn)

    sent_after: list[bool] = []

    def broadcast() -> None:
        for conn in list(conns):
            sent_after.append(conn.send(b"tick"))
            conn.set_idle_timeout(30)

    with serving(lambda: Producer(events), edge=edge) as server:
        server.loop.call_soon_threadsafe(
            lambda: server.loop.call_later(0.005, broadcast, repeat=0.005)
        )
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # keep the output queued
        client.settimeout(TIMEOUT)
        client.connect(("127.0.0.1", server.port))
        events.wait_count("accept", 1)
        time.sleep(0.05)
        reset(client)
        events.wait_count("close", 1)
        time.sleep(0.05)
        still_serving(server.port)
    [(_, _, reason, _)] = events.of("close")[:1]
    assert reason in PEER_GONE
    assert sent_after, "the timer never sent"
    assert sent_after[0] is False  # above high water from the start: "stop producing"


@pytest.mark.parametrize("edge", [False, True], ids=["level", "edge"])
def test_replies_in_the_step_of_a_reset_are_discarded_not_raised(edge: bool) -> None:
    """Data and the RST that follows it arrive in one step: each on_data replies; the library
    has already ended the id, but the replies are simply dropped (send() returns False)."""
    events = Events()
    results: list[bool] = []

    class Replier(Echo):
        def on_data(self, data: bytes) -> None:
            results.append(self.conn.send(data[:100]))
            self.conn.set_watermarks(0, 1 << 20)
            self.conn.pause_reading()
            self.conn.resume_reading()

    with serving(lambda: Replier(events), edge=edge) as server:
        for _ in range(5):
            client = connect(server.port)
            client.sendall(b"r" * 500_000)
            reset(client)
        events.wait_count("close", 5)
        still_serving(server.port)
    assert results, "on_data never ran"
    closes = events.of("close")[:5]
    assert all(c[2] in PEER_GONE for c in closes), closes


def test_shutdown_close_and_abort_after_the_peer_left_do_not_raise() -> None:
    events = Events()
    calls: list[str] = []
    sent: list[bool] = []

    class Late(Echo):
        def on_data(self, data: bytes) -> None:
            # The client has reset by now (it waited for nothing): every call is still fine.
            time.sleep(0.1)
            for name in ("send", "shutdown", "pause_reading", "resume_reading", "close", "abort"):
                method = getattr(self.conn, name)
                if name == "send":
                    sent.append(method(b"late"))
                else:
                    method()
                calls.append(name)

    with serving(lambda: Late(events)) as server:
        client = connect(server.port)
        client.sendall(b"hi")
        reset(client)
        events.wait_count("close", 1)
    assert calls == ["send", "shutdown", "pause_reading", "resume_reading", "close", "abort"]
    assert sent == [False]  # the peer is gone: the bytes are discarded, "stop producing"
    assert events.of("close")[0][2] in (*PEER_GONE, CloseReason.ABORT, CloseReason.LOCAL)


def test_send_after_your_own_close_is_still_your_mistake() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs, eploop.Loop() as loop:
        conn = loop.register(ours, eploop.Handler())
        conn.close()
        with pytest.raises(eploop.ClosingError):
            conn.send(b"too late")


def test_peername_of_a_peer_that_already_reset_does_not_raise() -> None:
    events = Events()
    names: list[Any] = []

    class Named(Echo):
        def on_accept(self) -> None:
            names.append(self.conn.peername)
            super().on_accept()

    with serving(lambda: Named(events)) as server:
        client = connect(server.port)
        reset(client)  # (usually before the loop's step that handles the accept)
        events.wait_count("close", 1)
    assert len(names) == 1 and len(names[0]) >= 2
