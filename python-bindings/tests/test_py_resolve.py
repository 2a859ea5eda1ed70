"""Loop.connect with a host name: resolved off the loop's thread (ep_connect), so connect()
returns at once; a name that does not resolve is the connection's one on_close. Names come from
/etc/hosts (localhost) or cannot resolve (.invalid): no test needs the network."""

from __future__ import annotations

import socket
import time

from bindings_support import TIMEOUT, recv_exactly

import eploop
from eploop import _ffi


class Client(eploop.Handler):
    def __init__(self) -> None:
        self.events: list[object] = []

    def on_accept(self) -> None:
        self.events.append("up")

    def on_data(self, data: bytes) -> None:
        self.events.append(data)

    def on_close(self, reason: eploop.CloseReason, err: int) -> None:
        self.events.append((reason, err))


def run_until(loop: eploop.Loop, done: object) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        loop.run_once(0.02)


def test_connect_to_localhost_by_name() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server, eploop.Loop() as loop:
        port = server.getsockname()[1]
        client = Client()
        started = time.monotonic()
        conn = loop.connect(("localhost", port), client, timeout=5)
        assert time.monotonic() - started < 0.2
        conn.send(b"hello by name")  # queued while the name resolves
        run_until(loop, lambda: "up" in client.events)
        peer, _ = server.accept()
        with peer:
            peer.settimeout(TIMEOUT)
            assert recv_exactly(peer, 13) == b"hello by name"
            peer.sendall(b"back")
            run_until(loop, lambda: b"back" in client.events)
        run_until(loop, lambda: len(client.events) == 3)
        assert client.events == ["up", b"back", (eploop.CloseReason.PEER_EOF, 0)]


def test_a_name_that_does_not_resolve_is_one_on_close() -> None:
    with eploop.Loop() as loop:
        client = Client()
        loop.connect(("does-not-exist.invalid", 80), client)
        run_until(loop, lambda: client.events)
        loop.run_once(0.05)
        assert len(client.events) == 1
        reason, err = client.events[0]  # type: ignore[misc]
        assert reason == eploop.CloseReason.ERROR
        assert err == 4102  # -EP_EAI_NONAME
        assert _ffi.strerror(-err) == "Name or service not known"


def test_close_while_resolving_is_the_one_on_close() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server, eploop.Loop() as loop:
        client = Client()
        conn = loop.connect(("localhost", server.getsockname()[1]), client)
        conn.close()
        run_until(loop, lambda: client.events)
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            loop.run_once(0.02)
        assert client.events == [(eploop.CloseReason.LOCAL, 0)]
