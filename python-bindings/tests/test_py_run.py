"""run() returns only when the loop is out of work after the last step's handlers ran, and
says why it returned (issue 10); a loop used from a second thread refuses, never races."""

from __future__ import annotations

import socket
import threading
import time

from bindings_support import TIMEOUT, LoopThread, connect, recv_exactly

import eploop
from eploop import RunResult


def test_run_returns_empty_when_nothing_is_registered() -> None:
    with eploop.Loop() as loop:
        assert loop.run() is RunResult.EMPTY


def test_run_returns_stopped_after_stop() -> None:
    with eploop.Loop() as loop:
        loop.listen(("127.0.0.1", 0), eploop.Handler)
        loop.call_later(0.01, loop.stop)
        assert loop.run() is RunResult.STOPPED


def test_a_client_reconnecting_from_on_close_keeps_run_going() -> None:
    """The retry loop every client needs: on_close of the loop's only registration connects
    again. run() must not return while the new connection is open."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(TIMEOUT)
    port = server.getsockname()[1]
    closes: list[eploop.CloseReason] = []
    result: list[RunResult] = []

    class Client(eploop.Handler):
        def on_close(self, reason: eploop.CloseReason, errno: int) -> None:
            closes.append(reason)
            if len(closes) < 3:
                self.conn.loop.connect(("127.0.0.1", port), Client())

    with server, eploop.Loop() as loop:
        loop.connect(("127.0.0.1", port), Client())
        thread = threading.Thread(target=lambda: result.append(loop.run()))
        thread.start()
        for _ in range(3):
            accepted, _ = server.accept()
            accepted.close()  # FIN: the client's on_close, which reconnects (twice)
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "run() did not return after the last close"
        assert loop.stats().open == 0
    assert closes == [eploop.CloseReason.PEER_EOF] * 3
    assert result == [RunResult.EMPTY]


def test_a_timer_started_from_the_last_on_close_keeps_run_going() -> None:
    fired: list[str] = []

    class StartsTimer(eploop.Handler):
        def on_close(self, reason: eploop.CloseReason, errno: int) -> None:
            self.conn.loop.call_later(0.02, lambda: fired.append("timer"))

    ours, theirs = socket.socketpair()
    with ours, eploop.Loop() as loop:
        loop.register(ours, StartsTimer())
        theirs.close()  # EOF: the only registration ends, its on_close starts a timer
        assert loop.run() is RunResult.EMPTY
        assert fired == ["timer"]
        assert loop.stats().timers == 0


def test_run_once_reports_more_when_handlers_ran() -> None:
    ours, theirs = socket.socketpair()
    with ours, eploop.Loop() as loop:
        loop.register(ours, eploop.Handler())
        theirs.close()
        assert loop.run_once(TIMEOUT) is RunResult.MORE  # the on_close step
        assert loop.run_once(TIMEOUT) is RunResult.EMPTY


def test_the_thread_rule_error_is_a_runtime_error_naming_the_rule() -> None:
    from eploop import _ffi, _loop

    for code, cls in (
        (_ffi.EP_ETHREAD, eploop.WrongThreadError),
        (_ffi.EP_EFORK, eploop.ForkedLoopError),
    ):
        error = _loop._error(code, "ep_send")
        assert type(error) is cls
        assert isinstance(error, RuntimeError) and isinstance(error, eploop.EploopError)
        assert error.errno == -code
    text = str(_loop._error(_ffi.EP_ETHREAD, "ep_get_stats"))
    assert "one thread at a time" in text and "call_soon_threadsafe()" in text


def test_a_second_thread_is_refused_while_the_loop_runs() -> None:
    """Needs the library's EP_ETHREAD: the call is refused, the loop keeps serving."""

    class Echo(eploop.Handler):
        def on_data(self, data: bytes) -> None:
            self.conn.send(data)

    loop = eploop.Loop()
    listener = loop.listen(("127.0.0.1", 0), Echo)
    runner = LoopThread(loop).start()
    try:
        with connect(listener.port) as client:  # .port: cached, no call into the loop
            client.sendall(b"1")
            assert recv_exactly(client, 1) == b"1"
            # The library refuses a call while another thread is inside one (the loop thread
            # waiting in ep_poll); between two of its calls, the loop thread may still be
            # finishing a step in Python: try again then.
            refused = None
            deadline = time.monotonic() + 2
            while refused is None and time.monotonic() < deadline:
                time.sleep(0.02)
                try:
                    loop.stats()
                except eploop.WrongThreadError as exc:
                    refused = exc
            assert isinstance(refused, RuntimeError), "never refused"
            assert "one thread at a time" in str(refused)
            client.sendall(b"2")  # the loop was not disturbed
            assert recv_exactly(client, 1) == b"2"
    finally:
        runner.finish()
    assert runner.error is None
