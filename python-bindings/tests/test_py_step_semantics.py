"""Python behaves like C, step for step (issue 10): the events of one step are fetched at once,
but after close()/abort() (or a raise) a connection gets nothing but its on_close, and after
pause_reading() no on_data until resume_reading(), which delivers the held data in order."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
from bindings_support import TIMEOUT, connect, recv_all, reset

import eploop
from eploop import CloseReason

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB: several data events in one step


class Counting(eploop.Handler):
    """Records on_data calls per step (``step`` is set by the test around each run_once)."""

    def __init__(self, action: str, log: list[Any]) -> None:
        self.action = action
        self.log = log

    def on_data(self, data: bytes) -> None:
        self.log.append(("data", STEP[0], len(data)))
        if self.action == "close":
            self.conn.close()
        elif self.action == "abort":
            self.conn.abort()
        elif self.action == "raise":
            raise ValueError("handler bug")

    def on_writable(self) -> None:
        self.log.append(("writable", STEP[0]))

    def on_close(self, reason: CloseReason, errno: int) -> None:
        self.log.append(("close", STEP[0], reason))


STEP = [0]


def big_buffer_listener() -> socket.socket:
    """A listener whose connections have a receive buffer larger than one of the library's reads
    (256 KiB; the kernel caps what it grants at twice net.core.rmem_max), so that a first read
    can be full and the step reads on."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    server.bind(("127.0.0.1", 0))
    server.listen()
    return server


def deliver_in_one_step(action: str, edge: bool) -> list[Any]:
    """The whole payload is in the kernel before the loop's first step after the accept."""
    log: list[Any] = []
    contexts: list[dict[str, Any]] = []
    server = big_buffer_listener()
    with eploop.Loop() as loop:
        loop.set_exception_handler(lambda _loop, context: contexts.append(context))
        port = loop.listen(server, lambda: Counting(action, log), edge=edge).port
        with connect(port) as client:
            while not loop.connections:
                loop.run_once(TIMEOUT)
            sender = threading.Thread(target=client.sendall, args=(PAYLOAD[:600_000],))
            sender.start()
            sender.join(TIMEOUT)
            time.sleep(0.05)
            deadline = time.monotonic() + TIMEOUT
            while not any(e[0] == "close" for e in log) and time.monotonic() < deadline:
                STEP[0] += 1
                loop.run_once(0.05)
                if action == "none" and sum(e[2] for e in log if e[0] == "data") >= 600_000:
                    break
    server.close()
    if action == "raise":
        assert len(contexts) == 1 and isinstance(contexts[0]["exception"], ValueError)
    return log


@pytest.mark.parametrize("edge", [False, True], ids=["level", "edge"])
def test_a_step_fetches_several_data_events(edge: bool) -> None:
    """The scenario of the tests below is real: one step hands over several on_data."""
    log = deliver_in_one_step("none", edge)
    first_step = log[0][1]
    assert sum(1 for e in log if e[0] == "data" and e[1] == first_step) >= 2, log


@pytest.mark.parametrize("edge", [False, True], ids=["level", "edge"])
@pytest.mark.parametrize("action", ["close", "abort", "raise"])
def test_nothing_but_on_close_after_close_abort_or_raise(action: str, edge: bool) -> None:
    log = deliver_in_one_step(action, edge)
    kinds = [e[0] for e in log]
    assert kinds == ["data", "close"], log
    expected = CloseReason.LOCAL if action == "close" else CloseReason.ABORT
    assert log[-1][2] == expected


class Pausing(eploop.Handler):
    def __init__(self, received: bytearray, log: list[str]) -> None:
        self.received = received
        self.log = log
        self.paused = False

    def on_data(self, data: bytes) -> None:
        assert not self.paused, "on_data while reading is paused"
        self.received += data
        self.log.append("data")
        if len(self.log) == 1:  # pause after the first chunk of the step
            self.paused = True
            self.conn.pause_reading()
            self.conn.loop.call_later(0.1, self.resume)

    def resume(self) -> None:
        self.log.append("resume")
        self.paused = False
        self.conn.resume_reading()

    def on_close(self, reason: CloseReason, errno: int) -> None:
        self.log.append(f"close {reason}")


@pytest.mark.parametrize("edge", [False, True], ids=["level", "edge"])
def test_pause_then_resume_delivers_the_held_data_in_order(edge: bool) -> None:
    received = bytearray()
    log: list[str] = []
    with eploop.Loop() as loop:
        loop.set_exception_handler(eploop.reraise)
        port = loop.listen(("127.0.0.1", 0), lambda: Pausing(received, log), edge=edge).port
        client = connect(port)

        def send_then_fin() -> None:  # (its EOF must come after every held byte)
            with client:
                client.sendall(PAYLOAD)

        sender = threading.Thread(target=send_then_fin)
        sender.start()
        loop.call_later(TIMEOUT, loop.stop)  # (the listener stays: a bound, not the end)
        while not log or not log[-1].startswith("close"):
            assert loop.run_once(TIMEOUT) != eploop.RunResult.STOPPED, log[-5:]
        sender.join(TIMEOUT)
    assert bytes(received) == PAYLOAD
    assert log[0] == "data" and log[1] == "resume", log[:5]
    assert log[-1] == "close peer_eof"
    assert log.count("resume") == 1


def test_data_held_by_a_pause_comes_before_a_reset_close() -> None:
    """The peer resets while reading is paused: the connection cannot live on, so (as C's
    read loop does) the data already read is delivered, then the one on_close."""
    received = bytearray()
    log: list[str] = []

    class PauseForever(Pausing):
        def resume(self) -> None:  # never resumes
            pass

    with eploop.Loop() as loop:
        port = loop.listen(("127.0.0.1", 0), lambda: PauseForever(received, log)).port
        client = connect(port)
        sender = threading.Thread(target=client.sendall, args=(PAYLOAD[:600_000],))
        sender.start()
        while not log:
            loop.run_once(TIMEOUT)
        sender.join(TIMEOUT)
        reset(client)
        deadline = time.monotonic() + TIMEOUT
        while not log or not log[-1].startswith("close"):
            assert time.monotonic() < deadline, log
            loop.run_once(0.05)
    assert bytes(received) == PAYLOAD[: len(received)]  # in order, nothing skipped
    assert log[-1].startswith("close")


def test_resume_between_steps_delivers_before_new_data() -> None:
    """resume_reading() called outside any handler (between run_once calls): the held data
    comes first in the next step, before anything read later."""
    received = bytearray()
    log: list[str] = []

    class Manual(Pausing):
        def resume(self) -> None:
            pass  # the test resumes by hand

    with eploop.Loop() as loop:
        port = loop.listen(("127.0.0.1", 0), lambda: Manual(received, log)).port
        with connect(port) as client:
            sender = threading.Thread(target=client.sendall, args=(PAYLOAD[:500_000],))
            sender.start()
            deadline = time.monotonic() + TIMEOUT
            while not log:
                assert time.monotonic() < deadline
                loop.run_once(0.05)
            sender.join(TIMEOUT)
            conn = loop.connections[0]
            client.sendall(PAYLOAD[500_000:600_000])  # (fits the kernel's buffers)
            client.shutdown(socket.SHUT_WR)
            for _ in range(3):
                loop.run_once(0.01)
            assert log == ["data"], "on_data ran while paused"
            conn.handler.paused = False
            conn.resume_reading()
            while not log[-1].startswith("close"):
                assert time.monotonic() < deadline, log
                loop.run_once(0.05)
            assert recv_all(client) == b""
    assert bytes(received) == PAYLOAD[:600_000]
    assert log[-1] == "close peer_eof"


STEP_BOUND = 512 * 1024  # what one step reads at most from level-triggered connections...
ONE_READ = 256 * 1024  # ...before the read that reaches it, which is at most this


class PerStep(eploop.Handler):
    """Counts the bytes each step (STEP) hands over and keeps them per connection."""

    def __init__(self, per_step: dict[int, int], received: list[bytearray]) -> None:
        self.per_step = per_step
        self.mine = bytearray()
        received.append(self.mine)

    def on_data(self, data: bytes) -> None:
        self.mine += data
        self.per_step[STEP[0]] = self.per_step.get(STEP[0], 0) + len(data)


@pytest.mark.parametrize("edge", [False, True], ids=["level", "edge"])
def test_a_step_takes_a_bounded_share_of_large_input(edge: bool) -> None:
    """Three peers have megabytes waiting at once. Level-triggered, one step reads no more than
    the bound (so its bytes are still in the CPU's cache when Python copies them): the rest comes
    in the next steps, no connection starves, every byte arrives in order. Edge-triggered
    connections are read as before (no event would come again for what a step leaves)."""
    size = 3 << 20
    payloads = [bytes([i]) * 1000 + (PAYLOAD * 3)[: size - 1000] for i in range(3)]
    per_step: dict[int, int] = {}
    received: list[bytearray] = []
    with eploop.Loop() as loop:
        loop.set_exception_handler(eploop.reraise)
        server = big_buffer_listener()
        port = loop.listen(server, lambda: PerStep(per_step, received), edge=edge).port
        clients = [connect(port) for _ in payloads]
        deadline = time.monotonic() + TIMEOUT
        while len(loop.connections) < len(clients):
            assert time.monotonic() < deadline
            loop.run_once(0.05)
        senders = [threading.Thread(target=c.sendall, args=(p,)) for c, p in zip(clients, payloads)]
        for sender in senders:
            sender.start()
        time.sleep(0.2)  # (the kernel's buffers fill: every connection has megabytes waiting)
        while sum(map(len, received)) < len(payloads) * size:
            assert time.monotonic() < deadline, [len(r) for r in received]
            STEP[0] += 1
            loop.run_once(0.05)
        for sender in senders:
            sender.join(TIMEOUT)
        for client in clients:
            client.close()
    server.close()
    assert sorted(bytes(r) for r in received) == sorted(payloads)
    if not edge:
        assert max(per_step.values()) <= STEP_BOUND + ONE_READ - 1, per_step
        assert max(per_step.values()) >= STEP_BOUND, "the bound was never reached"
