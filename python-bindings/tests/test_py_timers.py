"""Timers, calls from other threads, graceful drain and the loop's counters."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest
from bindings_support import TIMEOUT, Events, LoopThread, Recorder, connect, recv_exactly

import eploop
from eploop import CloseReason


def test_call_later_fires_in_order_and_cancel_stops_a_repeating_timer() -> None:
    fired: list[str] = []
    with eploop.Loop() as loop:
        started = time.monotonic()
        loop.call_later(0.06, lambda: fired.append("late"))
        loop.call_later(0.02, lambda: fired.append("early"))
        ticker = loop.call_later(0.01, lambda: fired.append("tick"), repeat=0.01)
        loop.call_later(0.045, ticker.cancel)
        loop.run()  # returns once no timer is pending
        elapsed = time.monotonic() - started
    assert fired[0] == "tick" and fired[-1] == "late"
    assert fired.index("early") < fired.index("late")
    assert 2 <= fired.count("tick") <= 5
    assert not ticker.active
    assert 0.05 < elapsed < 2


def test_a_cancelled_timer_never_runs() -> None:
    fired: list[int] = []
    with eploop.Loop() as loop:
        timer = loop.call_later(0.01, lambda: fired.append(1))
        timer.cancel()
        timer.cancel()  # idempotent
        loop.run()
    assert fired == []


def test_call_soon_threadsafe_runs_on_the_loop_thread() -> None:
    ran_on: list[int] = []
    loop = eploop.Loop()
    loop.listen(("127.0.0.1", 0), eploop.Handler)
    runner = LoopThread(loop).start()
    try:
        done = threading.Event()
        loop.call_soon_threadsafe(lambda: (ran_on.append(threading.get_ident()), done.set()))
        assert done.wait(TIMEOUT)
        assert ran_on == [runner._thread.ident]
        loop.call_soon_threadsafe(loop.stop)  # the usual way to stop from a thread
        assert runner.returned.wait(TIMEOUT)
    finally:
        runner.finish()
    with pytest.raises(ValueError):
        loop.call_soon_threadsafe(lambda: None)  # closed


class _CountingLib:
    """The library, with its ep_post calls counted."""

    def __init__(self, real: Any) -> None:
        self.real, self.posts = real, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def ep_post(self, *args: Any) -> int:
        self.posts += 1
        return int(self.real.ep_post(*args))


def test_a_burst_of_call_soon_threadsafe_is_one_post_and_runs_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1,000 calls from a thread while the loop is busy: one ep_post (the first call's), and
    every callback runs once, in call order, on the loop's thread."""
    counting = _CountingLib(eploop._events.lib)
    monkeypatch.setattr(eploop._events, "lib", counting)
    loop = eploop.Loop()
    loop.listen(("127.0.0.1", 0), eploop.Handler)
    runner = LoopThread(loop).start()
    ran: list[tuple[int, int]] = []
    try:
        busy, burst_done = threading.Event(), threading.Event()

        def hold() -> None:  # the loop's thread waits here while the burst is made
            busy.set()
            assert burst_done.wait(TIMEOUT)

        loop.call_soon_threadsafe(hold)
        assert busy.wait(TIMEOUT)
        before = counting.posts
        for i in range(1000):
            loop.call_soon_threadsafe(lambda i=i: ran.append((i, threading.get_ident())))
        posts = counting.posts - before
        burst_done.set()
        loop.call_soon_threadsafe(loop.stop)
        assert runner.returned.wait(TIMEOUT)
    finally:
        runner.finish()
    assert posts == 1, f"{posts} ep_post calls for a burst of 1,000"
    assert [i for i, _ in ran] == list(range(1000))
    assert {thread for _, thread in ran} == {runner._thread.ident}


def test_call_soon_threadsafe_from_many_threads_runs_each_once() -> None:
    loop = eploop.Loop()
    loop.listen(("127.0.0.1", 0), eploop.Handler)
    runner = LoopThread(loop).start()
    ran: list[tuple[int, int]] = []
    try:

        def poster(t: int) -> None:
            for i in range(2000):
                loop.call_soon_threadsafe(lambda i=i: ran.append((t, i)))
                if i % 100 == 0:
                    time.sleep(0.001)

        threads = [threading.Thread(target=poster, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        loop.call_soon_threadsafe(loop.stop)
        assert runner.returned.wait(TIMEOUT)
    finally:
        runner.finish()
    for t in range(4):
        assert [i for u, i in ran if u == t] == list(range(2000)), f"thread {t}"


def test_a_forked_child_cannot_join_its_parents_waiting_batch() -> None:
    """In a forked child, call_soon_threadsafe raises ForkedLoopError, as every call on an
    inherited loop, also while the parent has a batch waiting: joining it would accept a
    callback that never runs. The parent's batch still runs in the parent."""
    ran: list[str] = []
    with eploop.Loop() as loop:
        loop.call_soon_threadsafe(lambda: ran.append("parent"))  # waits: the loop is not running
        pid = os.fork()
        if pid == 0:  # the child reports through its exit code only
            code = 1
            try:
                loop.call_soon_threadsafe(lambda: None)
            except eploop.ForkedLoopError:
                code = 0
            except BaseException:
                code = 2
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {status}"
        loop.run_once(0)
    assert ran == ["parent"]


def test_drain_lets_connections_finish_then_closes_the_rest() -> None:
    events = Events()
    loop = eploop.Loop()
    port = loop.listen(("127.0.0.1", 0), lambda: Recorder(events, echo=True)).port
    runner = LoopThread(loop).start()
    with connect(port) as stays, connect(port) as leaves:
        events.wait_count("accept", 2)
        loop.call_soon_threadsafe(lambda: loop.drain(0.2))
        leaves.sendall(b"still served during the grace period")
        assert recv_exactly(leaves, 36) == b"still served during the grace period"
        leaves.close()
        assert recv_exactly(stays, 1) == b""  # closed gracefully once the grace period ended
        stays.close()  # (the loop lingers until our FIN: its graceful close reads to the end)
        assert runner.returned.wait(TIMEOUT), "run() did not return after the drain"
    runner.finish()
    assert runner.error is None
    reasons = sorted(str(c[2]) for c in events.of("close"))
    assert reasons == ["local", "peer_eof"]


def test_stats_count_what_happened() -> None:
    events = Events()
    with eploop.Loop() as loop:
        port = loop.listen(("127.0.0.1", 0), lambda: Recorder(events, echo=True)).port
        runner = LoopThread(loop, close=False).start()
        with connect(port) as client:
            client.sendall(b"12345")
            assert recv_exactly(client, 5) == b"12345"
        events.wait_count("close", 1)
        runner.finish()
        stats = loop.stats()
    assert stats.accepted == 1
    assert stats.open == 1  # the listener
    assert stats.bytes_in == 5 and stats.bytes_out == 5
    assert stats.closes[CloseReason.PEER_EOF] == 1
    assert stats.closes[CloseReason.ABORT] == 0  # the loop's own wakeup pipe is not counted
