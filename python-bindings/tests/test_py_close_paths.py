"""Every way a connection ends reaches the handler as exactly one on_close, after all its data."""

from __future__ import annotations

import errno
import socket
import time

import pytest
from bindings_support import (
    TIMEOUT,
    Events,
    Recorder,
    connect,
    recv_all,
    recv_exactly,
    reset,
    serving,
)

import eploop
from eploop import CloseReason


def only_close(events: Events) -> tuple:
    events.wait_count("close", 1)
    time.sleep(0.05)  # room for a (wrong) second on_close to show up
    closes = events.of("close")
    assert len(closes) == 1, f"expected exactly one on_close, got {closes}"
    return closes[0]


def test_peer_fin_is_one_peer_eof() -> None:
    events = Events()
    with serving(lambda: Recorder(events)) as server:
        with connect(server.port) as client:
            client.sendall(b"hello")
            events.wait_count("data", 1)
        _, conn_id, reason, err = only_close(events)
    assert (reason, err) == (CloseReason.PEER_EOF, 0)
    assert events.of("data") == [("data", conn_id, b"hello")]
    assert [e[0] for e in events.items] == ["accept", "data", "close"]


def test_fin_right_after_lots_of_data_delivers_every_byte_first() -> None:
    events = Events()
    handlers: list[Recorder] = []
    payload = bytes(range(256)) * 4096  # 1 MiB

    def factory() -> Recorder:
        handlers.append(Recorder(events))
        return handlers[-1]

    with serving(factory) as server:
        with connect(server.port) as client:
            client.sendall(payload)  # ...and close at once, with most of it still unread
        _, _, reason, _ = only_close(events)
    assert reason == CloseReason.PEER_EOF
    assert bytes(handlers[0].received) == payload
    assert events.items[-1][0] == "close"


def test_peer_rst_is_one_peer_reset_after_its_data() -> None:
    events = Events()
    with serving(lambda: Recorder(events)) as server:
        client = connect(server.port)
        client.sendall(b"last words")
        events.wait(lambda e: b"".join(d[2] for d in e.of("data")) == b"last words")
        reset(client)
        _, _, reason, err = only_close(events)
    assert (reason, err) == (CloseReason.PEER_RESET, errno.ECONNRESET)


def test_rst_right_after_data_still_ends_in_one_close() -> None:
    events = Events()
    with serving(lambda: Recorder(events)) as server:
        client = connect(server.port)
        events.wait_count("accept", 1)
        client.sendall(b"x" * 1000)
        reset(client)
        _, _, reason, err = only_close(events)
    assert (reason, err) == (CloseReason.PEER_RESET, errno.ECONNRESET)
    received = b"".join(d[2] for d in events.of("data"))
    assert received == b"x" * len(received)  # whatever arrived before the RST is intact


def test_half_close_with_reply() -> None:
    """The client sends its request and FIN; the server answers after seeing EOF."""
    events = Events()

    class Answer(Recorder):
        def on_eof(self) -> None:
            super().on_eof()
            self.conn.send(b"you said: " + bytes(self.received))
            self.conn.close()

    with serving(lambda: Answer(events), half_close=True) as server:
        with connect(server.port) as client:
            client.sendall(b"question")
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b"you said: question"
        _, _, reason, err = only_close(events)
    assert (reason, err) == (CloseReason.LOCAL, 0)
    assert [e[0] for e in events.items] == ["accept", "data", "eof", "close"]


def test_half_close_default_on_eof_closes_gracefully() -> None:
    events = Events()

    class Quiet(eploop.Handler):
        def on_close(self, reason: CloseReason, errno: int) -> None:
            events.add("close", self.conn.id, reason, errno)

    with serving(Quiet, half_close=True) as server:
        with connect(server.port) as client:
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b""
        _, _, reason, _ = only_close(events)
    assert reason == CloseReason.LOCAL


def test_without_half_close_a_reply_queued_on_the_last_data_is_still_delivered() -> None:
    events = Events()
    with serving(lambda: Recorder(events, echo=True)) as server:
        with connect(server.port) as client:
            client.sendall(b"echo me")
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b"echo me"
        _, _, reason, _ = only_close(events)
    assert reason == CloseReason.PEER_EOF


def test_a_reply_to_bytes_that_came_with_the_fin_is_delivered() -> None:
    """Data and FIN wait in the kernel before the loop runs: one step reads both; the reply
    the handler queues for the data must still go out before the connection closes."""
    events = Events()
    with eploop.Loop() as loop:
        port = loop.listen(("127.0.0.1", 0), lambda: Recorder(events, echo=True)).port
        with connect(port) as client:
            client.sendall(b"last words")
            client.shutdown(socket.SHUT_WR)
            time.sleep(0.05)
            while not events.of("close"):
                loop.run_once(TIMEOUT)
            assert recv_all(client) == b"last words"
    assert [e[2] for e in events.of("close")] == [CloseReason.PEER_EOF]


def test_data_and_fin_read_in_one_step_the_reply_goes_first_then_peer_eof() -> None:
    """Deterministic: the bytes and the FIN are in the socket before it is registered, so the
    first step reads both. The library holds the EOF until the next step (EP_QUEUE), so the
    echo the handler sends for the data still goes out, and on_close says peer_eof, 0."""
    events = Events()
    ours, theirs = socket.socketpair()
    with theirs, eploop.Loop() as loop:
        theirs.sendall(b"last words\x00 before FIN")
        theirs.shutdown(socket.SHUT_WR)
        loop.register(ours.detach(), Recorder(events, echo=True))  # an int fd: the loop owns it
        loop.run_once(TIMEOUT)
        assert [e[0] for e in events.items] == ["data"]  # the EOF is not acted on yet
        while not events.of("close"):
            loop.run_once(TIMEOUT)
        theirs.settimeout(TIMEOUT)
        assert recv_all(theirs) == b"last words\x00 before FIN"
    assert [e[0] for e in events.items] == ["data", "close"]
    assert events.of("close")[0][2:] == (CloseReason.PEER_EOF, 0)


def test_graceful_close_with_unread_input_loses_nothing_we_sent() -> None:
    """The server closes while the client's bytes sit unread in its buffer: no RST may destroy
    the reply (the classic close()-with-unread-input trap)."""
    events = Events()
    reply = b"r" * 200_000

    class CloseAtOnce(Recorder):
        def on_data(self, data: bytes) -> None:
            super().on_data(data)
            if len(self.received) == len(data):  # first chunk only
                self.conn.send(reply)
                self.conn.close()

    with serving(lambda: CloseAtOnce(events)) as server:
        with connect(server.port) as client:
            client.sendall(b"request " * 1000)
            time.sleep(0.05)
            client.sendall(b"more input the server will never read " * 1000)
            assert recv_all(client) == reply
        _, _, reason, _ = only_close(events)
    assert reason == CloseReason.LOCAL


def test_abort_sends_rst() -> None:
    events = Events()

    class Aborter(Recorder):
        def on_data(self, data: bytes) -> None:
            super().on_data(data)
            self.conn.send(b"dropped, never sent" * 10000)
            self.conn.abort()

    with serving(lambda: Aborter(events)) as server:
        with connect(server.port) as client:
            client.sendall(b"go")
            with pytest.raises(ConnectionResetError):
                while client.recv(65536):
                    pass
        _, _, reason, _ = only_close(events)
    assert reason == CloseReason.ABORT


def test_shutdown_then_peer_close() -> None:
    events = Events()

    class Shutter(Recorder):
        def on_data(self, data: bytes) -> None:
            super().on_data(data)
            if len(self.received) == len(data):  # the first chunk: answer, then FIN
                self.conn.send(b"bye")
                self.conn.shutdown()

    with serving(lambda: Shutter(events)) as server:
        with connect(server.port) as client:
            client.sendall(b"hi")
            assert recv_all(client) == b"bye"  # FIN after the reply
            client.sendall(b"the server still reads after its shutdown")
            events.wait(lambda e: b"still reads" in b"".join(d[2] for d in e.of("data")))
        _, _, reason, _ = only_close(events)
    assert reason in (CloseReason.LOCAL, CloseReason.PEER_EOF)


def test_closing_the_loop_closes_every_connection_once() -> None:
    events = Events()
    loop = eploop.Loop()
    listener = loop.listen(("127.0.0.1", 0), lambda: Recorder(events))
    clients = [connect(listener.port) for _ in range(3)]
    try:
        while len(events.of("accept")) < 3:
            loop.run_once(TIMEOUT)
        loop.close()
        for client in clients:
            assert recv_exactly(client, 1) == b""  # the loop closed its side
    finally:
        for client in clients:
            client.close()
    closes = events.of("close")
    assert sorted(c[1] for c in closes) == sorted(a[1] for a in events.of("accept"))
    assert {c[2] for c in closes} == {CloseReason.LOOP_FREED}


def test_connect_refused_is_one_close_with_the_errno() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, never listening: connecting is refused
        events = Events()
        with eploop.Loop() as loop:
            conn = loop.connect(("127.0.0.1", port), Recorder(events))
            loop.run()
    assert events.of("accept") == []
    assert events.of("close") == [("close", conn.id, CloseReason.ERROR, errno.ECONNREFUSED)] or (
        events.of("close") == [("close", conn.id, CloseReason.PEER_RESET, errno.ECONNREFUSED)]
    )


def test_connect_then_exchange() -> None:
    events = Events()
    server_events = Events()
    with serving(lambda: Recorder(server_events, echo=True)) as server:

        class Client(Recorder):
            def on_accept(self) -> None:
                super().on_accept()
                self.conn.send(b"over loopback")

            def on_data(self, data: bytes) -> None:
                super().on_data(data)
                if bytes(self.received) == b"over loopback":
                    self.conn.close()

        with eploop.Loop() as loop:
            conn = loop.connect(("127.0.0.1", server.port), Client(events))
            loop.run()
    assert events.of("accept") == [("accept", conn.id)]
    assert events.of("close") == [("close", conn.id, CloseReason.LOCAL, 0)]


def test_idle_timeout_ends_a_silent_connection() -> None:
    events = Events()

    class Idle(Recorder):
        def on_accept(self) -> None:
            super().on_accept()
            self.conn.set_idle_timeout(0.1)

    with serving(lambda: Idle(events)) as server, connect(server.port):
        started = time.monotonic()
        _, _, reason, err = only_close(events)
        elapsed = time.monotonic() - started
    assert (reason, err) == (CloseReason.TIMEOUT, errno.ETIMEDOUT)
    assert 0.05 < elapsed < 2


def test_unix_socket_listen_and_connect(tmp_path) -> None:
    path = str(tmp_path / "echo.sock")
    server_events, client_events = Events(), Events()

    class Client(Recorder):
        def on_accept(self) -> None:
            self.conn.send(b"unix\x00")

        def on_data(self, data: bytes) -> None:
            super().on_data(data)
            self.conn.close()

    with eploop.Loop() as loop:
        listener = loop.listen(path, lambda: Recorder(server_events, echo=True))
        loop.connect(path, Client(client_events))
        while not client_events.of("close"):
            loop.run_once(TIMEOUT)
        listener.close()
        loop.run()
    assert b"".join(d[2] for d in client_events.of("data")) == b"unix\x00"
