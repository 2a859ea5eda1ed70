"""Ctrl-C reaches Python promptly and is never lost inside a callback; stop() works from any
thread. Signal tests run in child processes so a stray SIGINT can never hit pytest itself."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

from bindings_support import CHILD_ENV, TIMEOUT, Events, LoopThread, Recorder, connect, recv_exactly

import eploop

PRELUDE = """
import os, signal, socket, sys, threading, time
import eploop
unraisable = []
sys.unraisablehook = lambda args: unraisable.append(repr(args.exc_value))
"""


def run_child(body: str, timeout: float = 30) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
        env=CHILD_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert "Exception ignored" not in result.stderr, result.stderr
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result.stdout.splitlines()


def test_sigint_while_idle_raises_keyboard_interrupt_from_run_fast_and_with_closes_all() -> None:
    lines = run_child(
        """
        events = []
        class H(eploop.Handler):
            def on_accept(self): events.append("accept")
            def on_close(self, reason, errno): events.append(f"close {reason}")
        sent_at = []
        def interrupt_when_idle():
            while events.count("accept") < 3:
                time.sleep(0.01)
            time.sleep(0.3)  # the loop now sits in epoll_wait
            sent_at.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGINT)
        with eploop.Loop() as loop:
            port = loop.listen(("127.0.0.1", 0), H).port
            clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
            threading.Thread(target=interrupt_when_idle, daemon=True).start()
            try:
                loop.run()
                print("run returned normally")
            except KeyboardInterrupt:
                print(f"latency {time.monotonic() - sent_at[0]:.4f}")
        print("events", sorted(events))
        print("eof", [c.recv(1) for c in clients])
        print("handler restored", signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        print("wakeup fd", signal.set_wakeup_fd(-1))
        print("unraisable", unraisable)
        """
    )
    latency = float(next(line for line in lines if line.startswith("latency")).split()[1])
    assert latency < 0.1, f"KeyboardInterrupt took {latency:.3f}s"
    expected = ["accept"] * 3 + ["close loop_freed"] * 3
    assert f"events {expected}" in lines
    assert "eof [b'', b'', b'']" in lines
    assert "handler restored True" in lines
    assert "wakeup fd -1" in lines
    assert "unraisable []" in lines


def test_sigint_under_load_is_never_lost_inside_a_callback() -> None:
    """Signals land at random instants while callbacks run; each must surface from run()."""
    lines = run_child(
        """
        import random
        class Echo(eploop.Handler):
            def on_data(self, data): self.conn.send(data)
        stop_flood = threading.Event()
        def flood(port):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                while not stop_flood.is_set():
                    try:
                        s.sendall(b"x" * 512)
                        s.recv(65536)
                    except OSError:
                        return
        interrupted = 0
        with eploop.Loop() as loop:
            port = loop.listen(("127.0.0.1", 0), Echo).port
            flooders = [threading.Thread(target=flood, args=(port,), daemon=True) for _ in range(2)]
            for t in flooders:
                t.start()
            for round_ in range(20):
                delay = random.uniform(0.001, 0.03)
                timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
                # started from inside run() (its first step), so that on a loaded machine the
                # signal cannot land before run() is there to take it
                loop.call_later(0, timer.start)
                started = time.monotonic()
                try:
                    loop.run()
                except KeyboardInterrupt:
                    interrupted += 1
                timer.join()
                assert time.monotonic() - started < 2, "run() kept going after SIGINT"
            stop_flood.set()
        print("interrupted", interrupted)
        print("unraisable", unraisable)
        """,
        timeout=60,
    )
    assert "interrupted 20" in lines
    assert "unraisable []" in lines


def test_the_wakeup_pipe_keeps_nothing_alive_and_is_not_counted() -> None:
    """run() in the main thread watches a pipe for signals, registered with EP_UNREF: run()
    still returns once the last connection is gone, and stats() does not count the pipe."""
    lines = run_child(
        """
        class Echo(eploop.Handler):
            def on_data(self, data): self.conn.send(data)
        with eploop.Loop() as loop:
            ours, theirs = socket.socketpair()
            loop.register(ours, Echo())
            threading.Timer(0.2, theirs.close).start()
            started = time.monotonic()
            loop.run()  # returns when the socketpair closes, although the pipe stays registered
            print(f"returned after {time.monotonic() - started:.1f}")
            print("open", loop.stats().open)
            listener = loop.listen(("127.0.0.1", 0), eploop.Handler)
            loop.call_later(0.05, loop.stop)
            loop.run()
            stats = loop.stats()
            print("open", stats.open, "closes", sum(stats.closes.values()))
        """
    )
    assert "returned after 0.2" in lines
    assert "open 0" in lines
    assert "open 1 closes 1" in lines  # the listener; the one close is the socketpair's


def test_sigint_during_a_drain_still_wakes_the_loop() -> None:
    """ep_drain() ends the loop's own wakeup pipe too when its grace period is over; the loop
    watches it again at once, so Ctrl-C while the last connections linger is still prompt."""
    lines = run_child(
        """
        with eploop.Loop(linger=5) as loop:
            port = loop.listen(("127.0.0.1", 0), eploop.Handler).port
            client = socket.create_connection(("127.0.0.1", port), timeout=5)  # never closes
            loop.call_later(0.05, lambda: loop.drain(0.05))
            sent_at = []
            def interrupt():
                sent_at.append(time.monotonic())
                os.kill(os.getpid(), signal.SIGINT)
            threading.Timer(0.5, interrupt).start()  # the connection lingers by then
            # Only the timer thread takes SIGINT: epoll_wait is not interrupted (no EINTR),
            # the wakeup pipe alone can wake the loop.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                loop.run()
                print("run returned normally")
            except KeyboardInterrupt:
                print(f"latency {time.monotonic() - sent_at[0]:.4f}")
        """
    )
    latency = float(next(line for line in lines if line.startswith("latency")).split()[1])
    assert latency < 0.1, f"KeyboardInterrupt took {latency:.3f}s"


def test_sigint_just_before_the_wakeup_fd_is_set_is_not_lost() -> None:
    """A signal landing while run() sets itself up (its stand-in handler already installed, the
    wakeup fd not yet set) wrote no byte to the pipe: run() must see it before it first waits."""
    lines = run_child(
        """
        real_set_wakeup_fd, raced = signal.set_wakeup_fd, []
        def racing(fd, **kwargs):
            if fd != -1 and not raced:
                raced.append(fd)
                signal.raise_signal(signal.SIGINT)  # before the pipe is Python's wakeup fd
            return real_set_wakeup_fd(fd, **kwargs)
        signal.set_wakeup_fd = racing
        with eploop.Loop() as loop:
            loop.listen(("127.0.0.1", 0), eploop.Handler)
            started = time.monotonic()
            try:
                loop.run()
                print("run returned normally")
            except KeyboardInterrupt:
                print(f"interrupted after {time.monotonic() - started:.2f}", "raced", len(raced))
        """,
        timeout=10,
    )
    assert any(
        line.startswith("interrupted after 0.") and line.endswith("raced 1") for line in lines
    ), lines


def test_user_sigint_handler_is_left_alone() -> None:
    lines = run_child(
        """
        with eploop.Loop() as loop:
            loop.listen(("127.0.0.1", 0), eploop.Handler)
            signal.signal(signal.SIGINT, lambda *_: loop.stop())
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
            loop.run()  # returns normally: the handler stopped the loop
            print("stopped cleanly")
        """
    )
    assert "stopped cleanly" in lines


def test_sigint_interrupts_run_once() -> None:
    lines = run_child(
        """
        with eploop.Loop() as loop:
            loop.listen(("127.0.0.1", 0), eploop.Handler)
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
            started = time.monotonic()
            try:
                loop.run_once(5)
            except KeyboardInterrupt:
                print(f"interrupted after {time.monotonic() - started:.2f}")
        """
    )
    assert any(line.startswith("interrupted after 0.") for line in lines), lines


def test_a_loop_in_a_thread_is_stopped_from_the_main_thread() -> None:
    events = Events()
    loop = eploop.Loop()
    port = loop.listen(("127.0.0.1", 0), lambda: Recorder(events, echo=True)).port
    runner = LoopThread(loop).start()
    with connect(port) as client:
        client.sendall(b"alive")
        assert recv_exactly(client, 5) == b"alive"
        time.sleep(0.1)  # idle in epoll_wait, with the GIL released
        started = time.monotonic()
        loop.stop()
        assert runner.returned.wait(TIMEOUT)
        assert time.monotonic() - started < 0.5
        assert runner.error is None
        runner.finish()  # closes the loop in its thread
        assert recv_exactly(client, 1) == b""
    assert [c[2] for c in events.of("close")] == [eploop.CloseReason.LOOP_FREED]


def test_the_gil_is_released_while_waiting() -> None:
    loop = eploop.Loop()
    loop.listen(("127.0.0.1", 0), eploop.Handler)
    runner = LoopThread(loop).start()
    try:
        counted = 0
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            counted += 1
        assert counted > 10_000, "the main thread barely ran: the loop thread holds the GIL"
    finally:
        runner.finish()
