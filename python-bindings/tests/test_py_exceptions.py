"""An exception in any handler method is never swallowed: its connection is aborted and run()
re-raises it after the step; other connections go on and the loop can be run again."""

from __future__ import annotations

import socket
import time

import pytest
from bindings_support import TIMEOUT, Events, LoopThread, Recorder, connect, recv_exactly

import eploop
from eploop import CloseReason


class Boom(Exception):
    pass


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

    loop = eploop.Loop()
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

    loop = eploop.Loop()
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

    loop = eploop.Loop()
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
    loop = eploop.Loop()
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

    loop = eploop.Loop()
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

    loop = eploop.Loop()
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
    reported = len(errors) + sum(len(getattr(e, "__notes__", [])) for e in errors)
    assert reported == 2, f"expected both failures reported, got {errors!r}"


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
    with eploop.Loop() as loop:
        loop.call_later(0, lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            loop.run()
        loop.call_soon_threadsafe(lambda: [][1])
        with pytest.raises(IndexError):
            loop.run()
