"""Connection.send writes to the socket itself while the library's queue is empty (issue 12): the
library is then not called at all. What must not change: bytes leave in call order (after a
partial write, after a send through the library, after a timer's send made during the wait), a
descriptor the library closed in this step is never written to (its number may be another
connection's by then), a send from another thread is refused, SIGPIPE never kills a process
that restored its default, and ``stats().bytes_out`` counts every byte."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest
from bindings_support import CHILD_ENV, TIMEOUT, connect

import eploop
from eploop import _send

MODES = pytest.mark.parametrize("edge", [False, True], ids=["level", "edge"])


def step_until(loop: eploop.Loop, done: Any, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        loop.run_once(0.05)


def read_exactly(sock: socket.socket, size: int) -> bytes:
    sock.settimeout(TIMEOUT)
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(min(1 << 20, size - got))
        assert chunk, f"EOF after {got} of {size} bytes"
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class Echo(eploop.Handler):
    def on_data(self, data: bytes) -> None:
        self.conn.send(data)


@MODES
def test_echo_is_written_directly_and_counted(edge: bool) -> None:
    with eploop.Loop() as loop:
        port = loop.listen(("127.0.0.1", 0), Echo, edge=edge).port
        with connect(port) as client:
            for i in range(20):
                message = bytes([i]) * (100 + i)
                client.sendall(message)
                received = bytearray()
                deadline = time.monotonic() + TIMEOUT
                client.setblocking(False)
                while len(received) < len(message):
                    assert time.monotonic() < deadline
                    loop.run_once(0.01)
                    try:
                        received += client.recv(65536)
                    except BlockingIOError:
                        pass
                client.setblocking(True)
                assert bytes(received) == message
        total = sum(100 + i for i in range(20))
        assert loop._direct_out == total, "the echoes were not written directly"
        assert loop.stats().bytes_out == total


@MODES
def test_order_holds_across_a_partial_write_and_the_drain(edge: bool) -> None:
    """A send larger than the socket takes: the rest goes to the library's queue, without a
    copy (the bytes object is held until sent), and every later send follows it until an event
    says the queue is empty again."""
    big = bytes(range(256)) * 131072  # 32 MiB
    log: list[bool] = []

    class Producer(eploop.Handler):
        def on_data(self, data: bytes) -> None:
            if data == b"go":
                log.append(self.conn.send(big))
                for i in range(50):
                    log.append(self.conn.send(b"<%d>" % i))
            else:
                self.conn.send(b"[" + data + b"]")

    with eploop.Loop() as loop:
        port = loop.listen(("127.0.0.1", 0), Producer, edge=edge).port
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # (before connect)
        client.connect(("127.0.0.1", port))
        with client:
            client.sendall(b"go")
            step_until(loop, lambda: len(log) == 51, "the sends")
            conn = loop.connections[0]
            assert log[0] is False, "32 MiB above the high-water mark"
            assert conn._wfd == -1, "the queue holds bytes: no direct write"
            assert _send.pinned_count() == 1, "the rest of the big send is held, not copied"
            tail = b"".join(b"<%d>" % i for i in range(50))
            received: list[bytes] = []
            reader = threading.Thread(
                target=lambda: received.append(read_exactly(client, len(big) + len(tail)))
            )
            reader.start()
            deadline = time.monotonic() + TIMEOUT
            while reader.is_alive() and time.monotonic() < deadline:
                loop.run_once(0.02)
            reader.join(TIMEOUT)
            assert received and received[0] == big + tail, "bytes out of order"
            step_until(loop, lambda: _send.pinned_count() == 0, "the big send's release")
            # The queue drained; the next request's event says so: direct writes again.
            before = loop._direct_out
            client.sendall(b"ping")
            step_until(loop, lambda: loop._direct_out > before, "a direct write again")
            assert read_exactly(client, 6) == b"[ping]"
            assert loop.stats().bytes_out == len(big) + len(tail) + 6


@MODES
def test_a_timer_send_during_the_wait_keeps_its_place(edge: bool) -> None:
    """A timer firing in the step that also read data sends 32 MiB (through the library: C is
    running); the data's handler then sends again. The data event's queue figure (0) predates
    the timer's send: the second send must still go after the first, not around it."""
    big = b"a" * (32 << 20)
    with eploop.Loop() as loop:
        port = loop.listen(("127.0.0.1", 0), lambda: Tail(), edge=edge).port
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        client.connect(("127.0.0.1", port))
        with client:
            client.sendall(b"hello")
            step_until(loop, lambda: loop.connections and loop.connections[0].user, "hello")
            conn = loop.connections[0]
            assert read_exactly(client, 5) == b"HELLO"
            assert conn._wfd >= 0, "a direct connection to start with"
            client.sendall(b"x")
            time.sleep(0.1)  # the byte is in the kernel before the step
            received: list[bytes] = []
            reader = threading.Thread(  # (reading already: room opens as the step runs)
                target=lambda: received.append(read_exactly(client, len(big) + 3))
            )
            reader.start()
            loop.call_later(0, lambda: conn.send(big))
            loop.run_once(0)
            assert conn.user == "sent END", "the timer and the data in one step"
            assert conn._wfd == -1, "back to direct writes on a figure older than the send"
            deadline = time.monotonic() + TIMEOUT
            while reader.is_alive() and time.monotonic() < deadline:
                loop.run_once(0.02)
            reader.join(TIMEOUT)
            assert received and received[0] == big + b"END", "the handler's send overtook"


class Tail(eploop.Handler):
    def on_data(self, data: bytes) -> None:
        if data == b"hello":
            self.conn.send(b"HELLO")
            self.conn.user = "greeted"
        else:
            self.conn.send(b"END")
            self.conn.user = "sent END"


@MODES
def test_a_descriptor_closed_in_the_step_is_never_written(edge: bool) -> None:
    """A's data, B's departure and C's arrival in one step: C's socket gets B's old fd number,
    and A's handler runs before B's on_close (the batch keeps the order) and sends to B (a
    broadcast). That send must not reach C."""
    conns: dict[bytes, Any] = {}

    class Chat(eploop.Handler):
        def on_data(self, data: bytes) -> None:
            if data.startswith(b"name:"):
                conns[data[5:]] = self.conn
            elif data == b"broadcast":
                for name, conn in list(conns.items()):
                    if conn is not self.conn and not conn.closed:
                        conn.send(b"for " + name)

    with eploop.Loop() as loop:
        port = loop.listen(("127.0.0.1", 0), Chat, edge=edge).port
        a, b = connect(port), connect(port)
        a.sendall(b"name:a")
        step_until(loop, lambda: b"a" in conns, "a")
        b.sendall(b"name:b")
        step_until(loop, lambda: b"b" in conns, "b")
        old_fd = conns[b"b"].fileno()
        # Ready in this order, so dispatched in it in the next step: A's data (its handler runs
        # after the step), B's FIN (no data: B ends, its fd is closed, its on_close recorded),
        # C's connection (accepted on the lowest free number: B's).
        a.sendall(b"broadcast")
        time.sleep(0.05)
        b.close()
        time.sleep(0.05)
        c = connect(port)
        time.sleep(0.05)
        with a, c:
            loop.run_once(0)
            step_until(loop, lambda: conns[b"b"].closed, "b's on_close")
            new = [x for x in loop.connections if x is not conns[b"a"]]
            assert len(new) == 1
            assert new[0].fileno() == old_fd, "the scenario needs C on B's old fd number"
            for _ in range(5):
                loop.run_once(0.02)
            c.setblocking(False)
            with pytest.raises(BlockingIOError):
                leaked = c.recv(100)
                pytest.fail(f"C received what was meant for B: {leaked!r}")


@MODES
def test_a_send_from_another_thread_is_refused_even_mid_step(edge: bool) -> None:
    outcome: list[Any] = []

    class Handler(eploop.Handler):
        def on_data(self, data: bytes) -> None:
            def other() -> None:
                try:
                    self.conn.send(b"from another thread")
                    outcome.append("sent")
                except eploop.WrongThreadError as exc:
                    outcome.append(exc)

            thread = threading.Thread(target=other)
            thread.start()
            thread.join(TIMEOUT)  # (the handler is running: direct writes are allowed here)
            self.conn.send(b"ok")

    with eploop.Loop() as loop:
        port = loop.listen(("127.0.0.1", 0), Handler, edge=edge).port
        with connect(port) as client:
            client.sendall(b"x")
            step_until(loop, lambda: outcome, "the other thread")
            assert isinstance(outcome[0], eploop.WrongThreadError), outcome
            assert read_exactly(client, 2) == b"ok"


@MODES
def test_an_outbound_connection_sends_in_order(edge: bool) -> None:
    """Sends made before a connect() completes wait in the library; the first direct write
    comes after them."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    class Client(eploop.Handler):
        def on_accept(self) -> None:
            self.conn.send(b"-up")

        def on_data(self, data: bytes) -> None:
            self.conn.send(b"-" + data)

    with server, eploop.Loop() as loop:
        conn = loop.connect(("127.0.0.1", server.getsockname()[1]), Client(), edge=edge)
        conn.send(b"early")
        peer, _ = server.accept()
        with peer:
            received: list[bytes] = []
            reader = threading.Thread(target=lambda: received.append(read_exactly(peer, 8)))
            reader.start()
            step_until(loop, lambda: not reader.is_alive(), "the first bytes")
            assert received == [b"early-up"]
            peer.sendall(b"data")
            step_until(loop, lambda: loop._direct_out >= 5, "a direct write")
            assert read_exactly(peer, 5) == b"-data"


SIGPIPE_CHILD = textwrap.dedent(
    """
    import signal, socket, struct, sys, threading, time
    import eploop
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # as command-line tools often do
    closes = []

    class Echo(eploop.Handler):
        def on_data(self, data):
            self.conn.send(data)
            self.conn.send(data)

        def on_close(self, reason, errno):
            closes.append(reason)

    loop = eploop.Loop()
    port = loop.listen(("127.0.0.1", 0), Echo).port

    def clients():
        for _ in range(100):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"x" * 1000)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()  # RST, perhaps before the echo is written
        time.sleep(0.2)
        loop.stop()

    threading.Thread(target=clients).start()
    loop.run()
    print(len(closes), loop._direct_out)
    """
)


def test_sigpipe_at_its_default_never_kills() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SIGPIPE_CHILD],
        env=CHILD_ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    closes, direct = map(int, proc.stdout.split())
    assert closes == 100
    assert direct == 0, "with SIGPIPE at its default, only the library writes"


@MODES
def test_close_from_another_thread_still_delivers_and_answers(edge: bool) -> None:
    """close() settles what is already decided with a few steps of its own, on the calling
    thread: their handlers write as well as run()'s did, whichever thread ran the loop."""
    loop = eploop.Loop()
    port = loop.listen(("127.0.0.1", 0), Echo, edge=edge).port
    with connect(port) as client:
        runner = threading.Thread(
            target=lambda: step_until(loop, lambda: loop.connections, "the accept")
        )
        runner.start()
        runner.join(TIMEOUT)
        client.sendall(b"last words")
        time.sleep(0.05)
        loop.close()  # (this thread never ran the loop)
        assert read_exactly(client, 10) == b"last words"


def test_a_traced_loop_writes_only_through_the_library() -> None:
    """EPLOOP_TRACE=1 traces every read and write of the library: the binding then leaves
    every write to it, so the trace misses none."""
    child = textwrap.dedent(
        """
        import socket, threading
        import eploop

        class Echo(eploop.Handler):
            def on_data(self, data):
                self.conn.send(data)
                self.conn.close()

        loop = eploop.Loop()
        port = loop.listen(("127.0.0.1", 0), Echo).port

        def client():
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"traced")
                assert s.recv(100) == b"traced"
            loop.stop()

        threading.Thread(target=client).start()
        loop.run()
        print(loop._direct_out, loop.stats().bytes_out)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", child],
        env={**CHILD_ENV, "EPLOOP_TRACE": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["0", "6"]
    assert "write 6" in proc.stderr, proc.stderr[-2000:]
