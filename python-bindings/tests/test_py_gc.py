"""Nothing C can call is ever garbage-collected; a forgotten loop is freed without a sound."""

from __future__ import annotations

import gc
import weakref

import pytest
from bindings_support import Events, LoopThread, connect, recv_exactly

import eploop
from eploop import CloseReason


def make_server(events: Events) -> tuple[eploop.Loop, int]:
    """Everything but the loop (handler class, factory closure, listener) goes out of scope."""

    class Echo(eploop.Handler):
        def on_data(self, data: bytes) -> None:
            self.conn.send(data)

        def on_close(self, reason: CloseReason, errno: int) -> None:
            events.add("close", self.conn.id, reason)

    def factory() -> Echo:
        return Echo()

    loop = eploop.Loop()
    port = loop.listen(("127.0.0.1", 0), factory).port
    return loop, port


def test_callbacks_created_in_a_function_that_returned_survive_gc() -> None:
    events = Events()
    loop, port = make_server(events)
    gc.collect()
    runner = LoopThread(loop).start()
    try:
        for round_ in range(3):
            with connect(port) as client:
                gc.collect()
                message = b"round %d" % round_
                client.sendall(message)
                assert recv_exactly(client, len(message)) == message
            events.wait_count("close", round_ + 1)
    finally:
        runner.finish()
    assert [c[2] for c in events.of("close")] == [CloseReason.PEER_EOF] * 3


def test_a_handler_only_the_loop_references_lives_until_on_close() -> None:
    events = Events()
    seen: list[weakref.ref] = []

    class Tracked(eploop.Handler):
        def on_accept(self) -> None:
            seen.append(weakref.ref(self))

        def on_data(self, data: bytes) -> None:
            gc.collect()
            self.conn.send(data)

        def on_close(self, reason: CloseReason, errno: int) -> None:
            events.add("close")

    loop = eploop.Loop()
    port = loop.listen(("127.0.0.1", 0), Tracked).port
    runner = LoopThread(loop).start()
    try:
        with connect(port) as client:
            client.sendall(b"ping")
            assert recv_exactly(client, 4) == b"ping"
            assert seen and seen[0]() is not None
        events.wait_count("close", 1)
    finally:
        runner.finish()
    gc.collect()
    assert seen[0]() is None, "the handler leaked after its connection closed"


def test_a_loop_nobody_closed_is_freed_by_gc() -> None:
    loop = eploop.Loop()
    port = loop.listen(("127.0.0.1", 0), eploop.Handler).port
    ref = weakref.ref(loop)
    del loop
    gc.collect()
    assert ref() is None
    with pytest.raises(ConnectionRefusedError):
        connect(port)  # the listener's fd was closed with the loop


def test_timer_and_post_callbacks_created_in_a_function_that_returned_survive_gc() -> None:
    fired: list[str] = []

    def schedule(loop: eploop.Loop) -> None:
        label = "timer"
        loop.call_later(0.02, lambda: fired.append(label))
        loop.call_soon_threadsafe(lambda: fired.append("post"))

    with eploop.Loop() as loop:
        schedule(loop)
        gc.collect()
        loop.run()
    assert fired == ["post", "timer"]


def test_the_c_callable_objects_are_module_level() -> None:
    from eploop import _events, _ffi

    assert isinstance(_events._TIMER_TRAMPOLINE, _ffi.TIMER_CB)
    assert isinstance(_events._POST_TRAMPOLINE, _ffi.POST_CB)
