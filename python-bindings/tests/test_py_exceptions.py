"""An exception in any handler method is never swallowed: its connection is aborted and gets
nothing more but its on_close; the exception goes to the loop's exception handler. The default
logs it (logger "eploop") and keeps serving; ``eploop.reraise`` makes run() raise it after the
step; other connections go on and the loop can be run again."""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import pytest
from bindings_support import TIMEOUT, Events, LoopThread, Recorder, connect, recv_exactly

import eploop
from eploop import CloseReason


class Boom(Exception):
    pass


def reraising_loop() -> eploop.Loop:
    loop = eploop.Loop()
    loop.set_exception_handler(eploop.reraise)
    return loop


def run_until_raises(loop: eploop.Loop, runner: LoopThread | None = None) -> BaseException:
    """Wait for run() (in a thread, started here unless given) to raise; the loop stays open."""
    runner = runner or LoopThread(loop, close=False).start()
    assert runner.returned.wait(TIMEOUT), "run() did not return after a handler raised"
    error = runner.error
    runner.finish()
    assert error is not None, "run() returned normally although a handler raised"
    return error


def expect_reset(client: socket.socket) -> None:
    """The connection whose handler failed was aborted: the client sees RST."""
    with pytest.raises(ConnectionResetError):
        while client.recv(65536):
            pass


def test_factory_raising() -> None:
    def factory() -> eploop.Handler:
        raise Boom("factory")

    loop = reraising_loop()
    port = loop.listen(("127.0.0.1", 0), factory).port
    with connect(port) as client:
        error = run_until_raises(loop)
        expect_reset(client)
    loop.close()
    assert isinstance(error, Boom) and error.args == ("factory",)


@pytest.mark.parametrize("method", ["on_accept", "on_data", "on_eof", "on_writable"])
def test_a_raising_method_aborts_its_connection_and_run_reraises(method: str) -> None:
    events = Events()

    class Faulty(Recorder):
        def on_accept(self) -> None:
            super().on_accept()
            if method == "on_writable":
                self.conn.set_watermarks(0, 1)
                while self.conn.send(b"w" * 1_000_000):  # until above high water, so that
                    pass  # on_writable fires once the queue has drained
            if method == "on_accept":
                raise Boom(method)

        def on_data(self, data: bytes) -> None:
            super().on_data(data)
            if method == "on_data":
                raise Boom(method)

        def on_eof(self) -> None:
            super().on_eof()
            if method == "on_eof":
                raise Boom(method)

        def on_writable(self) -> None:
            super().on_writable()
            if method == "on_writable":
                raise Boom(method)

    loop = reraising_loop()
    port = loop.listen(("127.0.0.1", 0), lambda: Faulty(events), half_close=True).port
    runner = LoopThread(loop, close=False).start()
    try:
        client = connect(port)
    except ConnectionResetError:  # on_accept: the abort can even beat connect() returning
        assert method == "on_accept"
        client = None
    if client is not None:
        with client:
            if method == "on_data":
                client.sendall(b"trigger")
            if method == "on_eof":
                client.shutdown(socket.SHUT_WR)
            expect_reset(client)  # (for on_writable, reading lets the queue drain first)
    error = run_until_raises(loop, runner)
    loop.close()
    assert isinstance(error, Boom) and error.args == (method,)
    assert events.of("close")[-1][2] in (CloseReason.ABORT, CloseReason.LOOP_FREED)
    assert error.__traceback__ is not None
    assert any(frame.name == method for frame in _frames(error))


def _frames(error: BaseException) -> list:
    import traceback

    return traceback.extract_tb(error.__traceback__)


def test_on_close_raising_is_reraised() -> None:
    class FaultyClose(eploop.Handler):
        def on_close(self, reason: CloseReason, errno: int) -> None:
            raise Boom("on_close", reason)

    loop = reraising_loop()
    port = loop.listen(("127.0.0.1", 0), FaultyClose).port
    with connect(port):
        pass  # FIN at once
    error = run_until_raises(loop)
    loop.close()
    assert isinstance(error, Boom) and error.args == ("on_close", CloseReason.PEER_EOF)


def test_on_close_raising_during_loop_close_is_raised_by_close() -> None:
    class FaultyClose(eploop.Handler):
        def on_accept(self) -> None:
            accepted.append(self)

        def on_close(self, reason: CloseReason, errno: int) -> None:
            raise Boom(reason)

    accepted: list[eploop.Handler] = []
    loop = reraising_loop()
    port = loop.listen(("127.0.0.1", 0), FaultyClose).port
    with connect(port):
        while not accepted:
            loop.run_once(TIMEOUT)
        with pytest.raises(Boom) as info:
            loop.close()
    assert info.value.args == (CloseReason.LOOP_FREED,)
    assert loop.closed


def test_other_connections_are_untouched_and_the_loop_runs_again() -> None:
    events = Events()

    class Picky(Recorder):
        def on_data(self, data: bytes) -> None:
            super().on_data(data)
            if data == b"bad":
                raise Boom("bad input")
            self.conn.send(data)

    loop = reraising_loop()
    port = loop.listen(("127.0.0.1", 0), lambda: Picky(events)).port
    with connect(port) as good, connect(port) as bad:
        good.sendall(b"ok1")
        bad.sendall(b"bad")
        error = run_until_raises(loop)
        assert isinstance(error, Boom)
        expect_reset(bad)
        runner = LoopThread(loop).start()  # run() again: the good connection still works
        # (this runner closes the loop when it finishes)
        try:
            assert recv_exactly(good, 3) == b"ok1"
            good.sendall(b"ok2")
            assert recv_exactly(good, 3) == b"ok2"
        finally:
            runner.finish()
    assert runner.error is None


def test_two_handlers_raising_in_one_step_lose_nothing() -> None:
    class AlwaysFails(eploop.Handler):
        def on_data(self, data: bytes) -> None:
            raise Boom(self.conn.id)

    loop = reraising_loop()
    port = loop.listen(("127.0.0.1", 0), AlwaysFails).port
    with connect(port) as first, connect(port) as second:
        # Both are accepted and both requests are waiting before the loop runs once.
        for client in (first, second):
            client.sendall(b"x")
        time.sleep(0.05)
        errors = []
        for _ in range(3):
            try:
                loop.run_once(TIMEOUT)
            except Boom as exc:
                errors.append(exc)
            if len(errors) == 2 or (errors and getattr(errors[0], "__notes__", None)):
                break
        loop.close()
    if hasattr(BaseException, "add_note"):  # (3.11+; before, the first failure is raised)
        reported = len(errors) + sum(len(getattr(e, "__notes__", [])) for e in errors)
        assert reported == 2, f"expected both failures reported, got {errors!r}"
    else:
        assert errors, "neither failure was raised"


def test_keyboard_interrupt_inside_a_handler_surfaces_from_run() -> None:
    class Interrupting(eploop.Handler):
        def on_data(self, data: bytes) -> None:
            raise KeyboardInterrupt

    loop = eploop.Loop()
    port = loop.listen(("127.0.0.1", 0), Interrupting).port
    with connect(port) as client:
        client.sendall(b"^C")
        error = run_until_raises(loop)
    loop.close()
    assert isinstance(error, KeyboardInterrupt)


def test_callbacks_raising_from_timers_and_posts_are_reraised() -> None:
    with reraising_loop() as loop:
        loop.call_later(0, lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            loop.run()
        loop.call_soon_threadsafe(lambda: [][1])
        with pytest.raises(IndexError):
            loop.run()


class Picky(eploop.Handler):
    """Echoes, but raises on b"bad"; records what it got."""

    def __init__(self, events: Events) -> None:
        self.events = events

    def on_data(self, data: bytes) -> None:
        self.events.add("data", self.conn.id, data)
        if data.startswith(b"bad"):
            raise Boom("bad input")
        self.conn.send(data)

    def on_close(self, reason: CloseReason, errno: int) -> None:
        self.events.add("close", self.conn.id, reason, errno)


def test_the_default_logs_with_the_traceback_and_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events = Events()
    caplog.set_level(logging.ERROR, logger="eploop")
    loop = eploop.Loop()  # no exception handler set: the default
    port = loop.listen(("127.0.0.1", 0), lambda: Picky(events)).port
    runner = LoopThread(loop).start()
    try:
        with connect(port) as good, connect(port) as bad:
            good.sendall(b"one")
            assert recv_exactly(good, 3) == b"one"
            bad.sendall(b"bad")
            expect_reset(bad)
            events.wait_count("close", 1)
            good.sendall(b"two")  # the loop is still serving
            assert recv_exactly(good, 3) == b"two"
        with connect(port) as late:  # and still accepting
            late.sendall(b"three")
            assert recv_exactly(late, 5) == b"three"
    finally:
        runner.finish()
    assert runner.error is None, f"run() ended with {runner.error!r}"
    records = [r for r in caplog.records if r.name == "eploop"]
    assert len(records) == 1, records
    record = records[0]
    assert record.levelno == logging.ERROR
    assert "Picky.on_data" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], Boom)
    assert "raise Boom" in caplog.text  # the traceback, down to the raising line
    [bad_close] = [c for c in events.of("close") if c[2] == CloseReason.ABORT]
    # Nothing more reached the handler that raised, but its one on_close.
    assert [e for e in events.items if e[1] == bad_close[1]] == [
        ("data", bad_close[1], b"bad"),
        bad_close,
    ]


def test_a_custom_handler_receives_the_context() -> None:
    events = Events()
    contexts: list[dict[str, Any]] = []
    handlers: list[Picky] = []

    def factory() -> Picky:
        handlers.append(Picky(events))
        return handlers[-1]

    with eploop.Loop() as loop:
        loop.set_exception_handler(lambda lp, context: contexts.append((lp, context)))
        assert loop.get_exception_handler() is not None
        port = loop.listen(("127.0.0.1", 0), factory).port
        with connect(port) as client:
            client.sendall(b"bad")
            while not events.of("close"):
                loop.run_once(TIMEOUT)
            expect_reset(client)
    [(passed_loop, context)] = contexts
    assert passed_loop is loop
    assert set(context) == {"message", "exception", "connection", "handler"}
    assert isinstance(context["exception"], Boom)
    assert context["handler"] is handlers[0]
    assert isinstance(context["connection"], eploop.Connection)
    assert context["connection"].id == events.of("close")[0][1]
    assert "Picky.on_data" in context["message"]
    assert events.of("close")[0][2] == CloseReason.ABORT


def test_timer_and_post_callbacks_go_to_the_exception_handler() -> None:
    contexts: list[dict[str, Any]] = []

    def boom() -> None:
        raise Boom("timer")

    def post() -> None:
        raise Boom("post")

    with eploop.Loop() as loop:
        loop.set_exception_handler(lambda _loop, context: contexts.append(context))
        loop.call_later(0, boom)
        loop.call_later(0.05, lambda: loop.call_soon_threadsafe(post))
        ticks: list[int] = []
        loop.call_later(0.1, lambda: ticks.append(1))  # runs: the loop went on serving
        assert loop.run() == eploop.RunResult.EMPTY
    assert ticks == [1]
    assert [c["exception"].args for c in contexts] == [("timer",), ("post",)]
    assert [c["handler"] for c in contexts] == [boom, post]
    assert all(c["connection"] is None for c in contexts)
    assert "timer callback" in contexts[0]["message"]


def test_an_exception_handler_that_raises_stops_run_with_its_exception() -> None:
    class Handled(Exception):
        pass

    def handler(_loop: eploop.Loop, context: dict[str, Any]) -> None:
        raise Handled("from the handler") from context["exception"]

    with eploop.Loop() as loop:
        loop.set_exception_handler(handler)
        loop.call_later(0, lambda: 1 / 0)
        with pytest.raises(Handled) as info:
            loop.run()
        assert isinstance(info.value.__cause__, ZeroDivisionError)
        loop.set_exception_handler(None)  # back to the default: the loop runs on
        loop.call_later(0, lambda: 1 / 0)
        assert loop.run() == eploop.RunResult.EMPTY


def test_system_exit_from_a_handler_ends_run_even_with_the_default() -> None:
    events = Events()

    class Quits(Picky):
        def on_data(self, data: bytes) -> None:
            super().on_data(data)
            raise SystemExit(3)

    loop = eploop.Loop()
    port = loop.listen(("127.0.0.1", 0), lambda: Quits(events)).port
    with connect(port) as client:
        client.sendall(b"quit")
        error = run_until_raises(loop)
    loop.close()
    assert isinstance(error, SystemExit) and error.code == 3


def test_on_close_raising_during_loop_close_is_logged_by_default(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class FaultyClose(eploop.Handler):
        def on_accept(self) -> None:
            accepted.append(self)

        def on_close(self, reason: CloseReason, errno: int) -> None:
            raise Boom(reason)

    accepted: list[eploop.Handler] = []
    loop = eploop.Loop()
    port = loop.listen(("127.0.0.1", 0), FaultyClose).port
    with connect(port):
        while not accepted:
            loop.run_once(TIMEOUT)
        loop.close()  # does not raise
    assert loop.closed
    [record] = [r for r in caplog.records if r.name == "eploop"]
    assert "FaultyClose.on_close" in record.getMessage()
    assert record.exc_info is not None
    assert record.exc_info[1].args == (CloseReason.LOOP_FREED,)
