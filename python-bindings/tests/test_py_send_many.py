"""send_many, send_nocopy, send_file and auto_pause on real sockets, both trigger modes: bytes
leave in call order across every kind of send; a no-copy buffer is released exactly once
however the connection ends; files of 0 B to 100 MiB arrive byte for byte; a file truncated
while queued ends the connection once (ERROR, ENODATA); auto_pause bounds a pipelining flood."""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from bindings_support import TIMEOUT, Events, connect, recv_all, recv_exactly, reset, serving

import eploop
from eploop import CloseReason, _send

MIB = 1 << 20
MODES = [pytest.param(False, id="level"), pytest.param(True, id="edge")]


def pattern(seed: int, size: int) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


@contextmanager
def temp_file(data: bytes = b"", size: int = 0) -> Iterator[str]:
    """A file holding ``data``, or ``size`` bytes of pattern 7 written by 1 MiB blocks."""
    fd, path = tempfile.mkstemp(prefix="eploop-py-sendfile-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            for off in range(0, size, MIB):
                f.write(pattern(7, min(MIB, size - off)))
        yield path
    finally:
        os.unlink(path)


class Buf(bytearray):
    """A bytearray that can be watched with weakref: freed only once eploop let go of it."""


class Scripted(eploop.Handler):
    """Runs ``script(conn)`` on accept; records the close."""

    def __init__(self, events: Events, script: object) -> None:
        self.events = events
        self.script = script

    def on_accept(self) -> None:
        self.events.add("results", self.script(self.conn))  # type: ignore[operator]

    def on_close(self, reason: CloseReason, err: int) -> None:
        self.events.add("close", self.conn.id, reason, err)


@pytest.mark.parametrize("edge", MODES)
def test_mixed_sends_keep_call_order(edge: bool) -> None:
    big = Buf(pattern(1, 8 * MIB))
    parts = [pattern(i, 1 + 37 * i) for i in range(100)]
    with temp_file(pattern(3, 3 * MIB + 5)) as path:
        expected = (
            b"head;"
            + b"".join(parts)
            + bytes(big)
            + b"mid;"
            + pattern(3, 3 * MIB + 5)[5 : 5 + 2 * MIB]
            + b"".join(parts[:3])
            + pattern(3, 3 * MIB + 5)
            + b"tail"
        )

        def script(conn: eploop.Connection) -> list[bool]:
            with open(path, "rb") as f:
                results = [
                    conn.send(b"head;"),
                    conn.send_many(parts),
                    conn.send_nocopy(big),
                    conn.send_nocopy(memoryview(b"mid;")),
                    conn.send_file(f, 5, 2 * MIB),
                    conn.send_many(memoryview(p) for p in parts[:3]),
                    conn.send_file(f.fileno()),
                    conn.send_nocopy(b"tail"),
                ]
            conn.close()
            return results

        events = Events()
        calls = _send.release_calls
        with serving(lambda: Scripted(events, script), edge=edge) as server:
            with connect(server.port) as client:
                got = recv_all(client)
            events.wait_count("close", 1)
        assert len(got) == len(expected)
        assert hashlib.sha256(got).digest() == hashlib.sha256(expected).digest()
        assert events.of("close")[0][2] == CloseReason.LOCAL
        assert _send.release_calls - calls == 3
        assert _send.pinned_count() == 0


@pytest.mark.parametrize("edge", MODES)
def test_send_many_writes_directly_and_holds_a_large_rest(edge: bool) -> None:
    """Bytes objects go out with one writev of the binding's own while nothing is queued; what
    the kernel did not take of a large one is held until sent, not copied (as send() does),
    and everything, with the sends after it, arrives in call order."""
    body = pattern(4, 8 * MIB)
    parts = [b"head;", body, b";tail", b"!" * 100]

    def script(conn: eploop.Connection) -> list[object]:
        before = conn.loop._direct_out
        results = [conn.send_many(parts), conn.send(b"after")]
        return [*results, conn.loop._direct_out - before, _send.pinned_count()]

    events = Events()
    calls = _send.release_calls
    expected = b"".join(parts) + b"after"
    with serving(lambda: Scripted(events, script), edge=edge) as server:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # (before connect)
        client.connect(("127.0.0.1", server.port))
        with client:
            # Not read before the script ran: a reader draining meanwhile lets one writev take
            # nearly all 8 MiB (tcp_wmem's maximum is 4 MiB here), and nothing stays queued.
            events.wait_count("results", 1)
            got = recv_exactly(client, len(expected))
    (results,) = events.of("results")
    more, after, direct, pinned = results[1]
    assert more is False, "8 MiB queued is above the high-water mark"
    assert after is False, "and stays above it"
    assert 0 < direct < len(expected), "a direct writev took part of it"
    assert pinned == 1, "the rest of the body is held, not copied"
    assert hashlib.sha256(got).digest() == hashlib.sha256(expected).digest()
    assert _send.release_calls - calls == 1
    assert _send.pinned_count() == 0


@pytest.mark.parametrize("ending", ["flushed", "abort", "peer_reset", "loop_free"])
@pytest.mark.parametrize("edge", MODES)
def test_nocopy_buffer_released_exactly_once(edge: bool, ending: str) -> None:
    freed = threading.Event()
    events = Events()
    calls = _send.release_calls

    def script(conn: eploop.Connection) -> bool:
        big = Buf(pattern(2, 32 * MIB))
        weakref.finalize(big, freed.set)
        queued = conn.send_nocopy(big)
        if ending == "abort":
            conn.abort()
        return queued

    with serving(lambda: Scripted(events, script), edge=edge) as server:
        client = connect(server.port)
        events.wait_count("results", 1)
        assert events.of("results")[0][1] is False, "32 MiB to a client not reading is queued"
        if ending == "flushed":
            assert recv_exactly(client, 32 * MIB) == pattern(2, 32 * MIB)
            client.close()
        elif ending == "peer_reset":
            reset(client)
        if ending != "loop_free":
            events.wait_count("close", 1)
            assert freed.wait(TIMEOUT), "the buffer was never released"
    # loop_free: serving() closed the loop with the buffer still queued.
    assert freed.wait(TIMEOUT), "the buffer was never released"
    assert _send.release_calls - calls == 1
    assert _send.pinned_count() == 0
    assert len(events.of("close")) == 1
    if ending != "flushed":
        client.close()


def test_refused_nocopy_send_raises_and_keeps_nothing() -> None:
    events = Events()
    calls = _send.release_calls

    def script(conn: eploop.Connection) -> str:
        conn.shutdown()
        try:
            conn.send_nocopy(b"late")
        except eploop.EploopError as exc:
            return errno.errorcode.get(exc.errno or 0, "?")
        return "sent"

    with serving(lambda: Scripted(events, script)) as server, connect(server.port) as client:
        events.wait_count("results", 1)
        assert recv_all(client) == b""
    assert events.of("results")[0][1] == "ESHUTDOWN"
    assert _send.pinned_count() == 0
    assert _send.release_calls == calls


@pytest.mark.parametrize("size", [0, 1, MIB, 100 * MIB])
@pytest.mark.parametrize("edge", MODES)
def test_send_file_sizes_byte_for_byte(edge: bool, size: int) -> None:
    with temp_file(size=size) as path:

        def script(conn: eploop.Connection) -> bool:
            with open(path, "rb") as f:  # closed at once: the loop has its own descriptor
                ok = conn.send_file(f)
            conn.close()
            return ok

        events = Events()
        started = time.monotonic()
        with serving(lambda: Scripted(events, script), edge=edge) as server:
            with connect(server.port) as client:
                client.settimeout(60)
                digest = hashlib.sha256()
                received = 0
                while chunk := client.recv(1 << 18):
                    digest.update(chunk)
                    received += len(chunk)
            events.wait_count("close", 1)
        assert received == size
        want = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(MIB):
                want.update(block)
        assert digest.digest() == want.digest()
        assert events.of("close")[0][2] == CloseReason.LOCAL
        assert time.monotonic() - started < 60


@pytest.mark.parametrize("edge", MODES)
def test_file_truncated_while_queued_closes_once_with_enodata(edge: bool) -> None:
    with temp_file(size=64 * MIB) as path:

        def script(conn: eploop.Connection) -> bool:
            with open(path, "rb") as f:
                return conn.send_file(f)

        events = Events()
        with serving(lambda: Scripted(events, script), edge=edge) as server:
            with connect(server.port) as client:
                events.wait_count("results", 1)
                os.truncate(path, MIB)
                client.settimeout(TIMEOUT)
                received = 0
                try:
                    while chunk := client.recv(1 << 18):
                        received += len(chunk)
                except ConnectionResetError:
                    pass
                events.wait_count("close", 1)
        closes = events.of("close")
        assert len(closes) == 1
        assert closes[0][2:] == (CloseReason.ERROR, errno.ENODATA)
        assert received < 64 * MIB


class KeyServer(eploop.Handler):
    """"GET <key>\\n" -> a 1 MiB value; parsing stops while send() says stop and goes on from
    on_writable, the leftover input kept here."""

    def __init__(self, stats: dict[str, int]) -> None:
        self.stats = stats
        self.pending = bytearray()
        self.stopped = False

    def on_data(self, data: bytes) -> None:
        self.pending += data
        self.stats["read"] += len(data)
        self.stats["held"] = max(self.stats["held"], len(self.pending))
        self.process()

    def on_writable(self) -> None:
        self.stopped = False
        self.process()

    def process(self) -> None:
        used = 0
        while not self.stopped:
            end = self.pending.find(b"\n", used)
            if end < 0:
                break
            key = bytes(self.pending[used + 4 : end])
            used = end + 1
            self.stopped = not self.conn.send_many([key, b"." * (MIB - len(key))])
        del self.pending[:used]


def flood(edge: bool, auto_pause: bool) -> dict[str, int]:
    stats = {"read": 0, "held": 0}
    with serving(lambda: KeyServer(stats), edge=edge, auto_pause=auto_pause) as server:
        client = connect(server.port)
        client.settimeout(0.2)
        deadline = time.monotonic() + 1.5
        i = 0
        while time.monotonic() < deadline:
            try:
                client.send(b"GET %08d\n" % i)
            except (socket.timeout, BlockingIOError):  # (not TimeoutError before 3.10)
                pass
            i += 1
        snapshot = dict(stats)
        reset(client)
    return snapshot


@pytest.mark.parametrize("edge", MODES)
def test_auto_pause_bounds_a_pipelining_flood(edge: bool) -> None:
    paused = flood(edge, auto_pause=True)
    assert paused["read"] <= 1 * MIB, paused
    assert paused["held"] <= 1 * MIB, paused
    control = flood(edge, auto_pause=False)
    assert control["held"] > 2 * MIB, f"without auto_pause the input should pile up: {control}"


@pytest.mark.parametrize("edge", MODES)
def test_auto_pause_resumes_and_answers_every_request(edge: bool) -> None:
    requests = 3000
    stats = {"read": 0, "held": 0}
    with serving(lambda: KeyServer(stats), edge=edge, auto_pause=True) as server:
        with connect(server.port) as client:
            client.settimeout(30)
            payload = b"".join(b"GET %08d\n" % i for i in range(requests))
            sender = threading.Thread(target=client.sendall, args=(payload,))
            sender.start()
            for i in range(requests):
                reply = recv_exactly(client, MIB)
                assert reply[:8] == b"%08d" % i, f"reply {i}"
            sender.join(TIMEOUT)
    assert stats["held"] <= 1 * MIB, stats


def test_send_file_rejects_a_pipe() -> None:
    events = Events()
    r, w = os.pipe()

    def script(conn: eploop.Connection) -> str:
        try:
            conn.send_file(r)
        except OSError as exc:
            return errno.errorcode.get(exc.errno or 0, "?")
        finally:
            conn.close()
        return "sent"

    try:
        with serving(lambda: Scripted(events, script)) as server, connect(server.port) as client:
            events.wait_count("results", 1)
            assert recv_all(client) == b""
    finally:
        os.close(r)
        os.close(w)
    assert events.of("results")[0][1] == "EINVAL"
