"""Loop.add_signal_handler / remove_signal_handler (asyncio's API): the callback runs on the
loop's thread in a step of run(), Ctrl-C works as before without one, and removing or closing
puts back what was there. Each test runs in a child process, so no signal can hit pytest."""

from __future__ import annotations

import signal

import pytest
from test_py_signals import run_child

import eploop


def test_a_signal_calls_the_callback_with_its_args_on_the_loops_thread() -> None:
    lines = run_child(
        """
        calls = []
        with eploop.Loop() as loop:
            def on_usr1(tag):
                calls.append((tag, threading.get_ident() == loop_thread))
                loop.stop()
            loop_thread = threading.get_ident()
            before = signal.getsignal(signal.SIGUSR1)
            loop.add_signal_handler(signal.SIGUSR1, on_usr1, "usr1")
            loop.listen(("127.0.0.1", 0), eploop.Handler)  # keeps run() running
            loop.call_later(0.05, lambda: os.kill(os.getpid(), signal.SIGUSR1))
            started = time.monotonic()
            loop.run()
            print("elapsed ok", time.monotonic() - started < 5)
            print("calls", calls)
            print("removed", loop.remove_signal_handler(signal.SIGUSR1))
            print("again", loop.remove_signal_handler(signal.SIGUSR1))
            print("restored", signal.getsignal(signal.SIGUSR1) == before)
        print("unraisable", unraisable)
        """
    )
    assert "elapsed ok True" in lines
    assert "calls [('usr1', True)]" in lines
    assert "removed True" in lines and "again False" in lines
    assert "restored True" in lines
    assert "unraisable []" in lines


def test_sigint_handler_replaces_keyboard_interrupt_and_removing_it_brings_it_back() -> None:
    lines = run_child(
        """
        calls = []
        with eploop.Loop() as loop:
            def on_int():
                calls.append("int")
                loop.remove_signal_handler(signal.SIGINT)  # during run(): Ctrl-C is back
                loop.call_later(0.05, lambda: os.kill(os.getpid(), signal.SIGINT))
            loop.add_signal_handler(signal.SIGINT, on_int)
            loop.listen(("127.0.0.1", 0), eploop.Handler)
            loop.call_later(0.05, lambda: os.kill(os.getpid(), signal.SIGINT))
            try:
                loop.run()
                print("run returned")
            except KeyboardInterrupt:
                print("keyboard interrupt from run")
        print("calls", calls)
        print("default back", signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        print("unraisable", unraisable)
        """
    )
    assert "calls ['int']" in lines
    assert "keyboard interrupt from run" in lines
    assert "default back True" in lines
    assert "unraisable []" in lines


def test_a_handler_added_inside_run_and_a_signal_before_run() -> None:
    lines = run_child(
        """
        calls = []
        with eploop.Loop() as loop:
            # Added while run() runs (from a timer), then signalled.
            def add_then_signal():
                loop.add_signal_handler(signal.SIGUSR2, lambda: (calls.append("usr2"), loop.stop()))
                os.kill(os.getpid(), signal.SIGUSR2)
            loop.call_later(0.01, add_then_signal)
            loop.listen(("127.0.0.1", 0), eploop.Handler)
            loop.run()
            # A signal while the loop is not running is handled at the next run().
            loop.add_signal_handler(signal.SIGUSR1, lambda: (calls.append("usr1"), loop.stop()))
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.05)
            print("before run", calls)
            loop.run()
            print("after run", calls)
            print("usr2 kept", signal.getsignal(signal.SIGUSR2) is not signal.SIG_DFL)
        print("closed restores", signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL,
              signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL)
        print("unraisable", unraisable)
        """
    )
    assert "before run ['usr2']" in lines
    assert "after run ['usr2', 'usr1']" in lines
    assert "usr2 kept True" in lines
    assert "closed restores True True" in lines
    assert "unraisable []" in lines


def test_an_exception_in_the_callback_goes_to_the_exception_handler() -> None:
    """Like any callback's: to the loop's exception handler (the default logs and keeps serving;
    eploop.reraise makes run() raise it)."""
    lines = run_child(
        """
        with eploop.Loop() as loop:
            def boom():
                raise ValueError("from the signal callback")
            def handler(lp, context):
                print("handled", context["exception"])
                lp.stop()
            loop.set_exception_handler(handler)
            loop.add_signal_handler(signal.SIGUSR1, boom)
            loop.listen(("127.0.0.1", 0), eploop.Handler)
            loop.call_later(0.01, lambda: os.kill(os.getpid(), signal.SIGUSR1))
            print("run", loop.run().name)
            loop.set_exception_handler(eploop.reraise)
            loop.call_later(0.01, lambda: os.kill(os.getpid(), signal.SIGUSR1))
            try:
                loop.run()
            except ValueError as exc:
                print("raised", exc)
        print("unraisable", unraisable)
        """
    )
    assert "handled from the signal callback" in lines
    assert "run STOPPED" in lines
    assert "raised from the signal callback" in lines
    assert "unraisable []" in lines


def test_a_handler_keeps_nothing_running_and_works_with_a_loop_in_another_thread() -> None:
    lines = run_child(
        """
        calls = []
        with eploop.Loop() as loop:
            loop.add_signal_handler(signal.SIGUSR1, lambda: calls.append(threading.get_ident()))
            loop.run()  # nothing registered: returns at once despite the handler
            print("returned")
            loop.listen(("127.0.0.1", 0), eploop.Handler)
            ran_in = []
            def serve():
                ran_in.append(threading.get_ident())
                loop.run()
            worker = threading.Thread(target=serve)
            worker.start()
            time.sleep(0.1)
            os.kill(os.getpid(), signal.SIGUSR1)
            deadline = time.monotonic() + 5
            while not calls and time.monotonic() < deadline:
                time.sleep(0.01)
            loop.stop()
            worker.join(5)
            print("called in the loop's thread", calls == ran_in)
        print("unraisable", unraisable)
        """
    )
    assert "returned" in lines
    assert "called in the loop's thread True" in lines
    assert "unraisable []" in lines


def test_misuse_is_refused() -> None:
    with eploop.Loop() as loop:
        with pytest.raises(ValueError):
            loop.add_signal_handler(0, print)
        with pytest.raises(RuntimeError):
            loop.add_signal_handler(signal.SIGKILL, print)
        with pytest.raises(TypeError):
            loop.add_signal_handler("SIGINT", print)  # type: ignore[arg-type]
        assert loop.remove_signal_handler(signal.SIGUSR1) is False
        errors = []

        def from_thread() -> None:
            try:
                loop.add_signal_handler(signal.SIGUSR1, print)
            except RuntimeError as exc:
                errors.append(exc)

        import threading

        worker = threading.Thread(target=from_thread)
        worker.start()
        worker.join(5)
        assert len(errors) == 1
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
