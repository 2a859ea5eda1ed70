"""Signal handlers on a ``Loop``, like asyncio's ``add_signal_handler``.

Why not ``ep_signal_start``: Python already owns signal delivery. Its C-level handler is
process-wide and runs Python handlers in the main thread, wherever the kernel delivered the
signal; ``ep_signal_start`` instead blocks the signal in the loop's thread and reads it from a
signalfd, so in a Python program with other threads the signal would go to one of those and meet
Python's own handler (or the default action) instead of the loop. So, as asyncio does, a handler
here is a Python-level ``signal.signal`` handler that does nothing but post the call to the loop
(``call_soon_threadsafe``); the callback then runs on the loop's thread, in a step of ``run()``,
like a timer callback (an exception it raises propagates from ``run()``). While ``run()`` waits,
its wakeup pipe (``signal.set_wakeup_fd``) wakes it at once.

A handler does not keep ``run()`` running (as ``EP_UNREF`` in C). Only the main thread may add or
remove handlers (Python's rule for ``signal.signal``); the loop may run in any thread.
``remove_signal_handler`` and ``Loop.close()`` put back the handler that was there before.

Signals (Ctrl-C): while ``run()``/``run_once()`` runs in the main thread, Python-level signal
handlers are deferred: a signal is queued and its real handler called from ``run()`` itself
between steps, so ``KeyboardInterrupt`` (or ``SystemExit`` from a SIGTERM handler) propagates
from ``run()``, never from the middle of a step, where it would lose the step's other events
(or, inside a timer callback, be swallowed by ctypes). During ``run()``,
``signal.set_wakeup_fd`` points at a pipe the loop watches (registered once, with EP_UNREF, so
it neither keeps the loop alive nor shows in ``stats()``), so a signal arriving at any instant
wakes ``epoll_wait`` at once. (``_SignalGuard``)
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # getsignal without the enum conversion
import os
import signal
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _ffi
from ._ffi import lib

if TYPE_CHECKING:
    from ._loop import Loop

_UNCATCHABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})


class _PostingHandler:
    """The Python-level handler of one signal of one loop: posts the call to the loop and never
    raises (it may run between any two bytecodes of the main thread)."""

    __slots__ = ("args", "callback", "loop", "previous", "signum")

    def __init__(
        self, loop: Loop, signum: int, callback: Callable[..., object], args: tuple[Any, ...]
    ) -> None:
        self.loop = weakref.ref(loop)
        self.signum = signum
        self.callback = callback
        self.args = args
        self.previous: Any = signal.SIG_DFL

    def __call__(self, _signum: int, _frame: object) -> None:
        loop = self.loop()
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._run)
        except (ValueError, OSError):  # the loop is closed or being freed: nobody to call
            pass

    def _run(self) -> None:
        loop = self.loop()
        # A delivery posted before remove_signal_handler (or a replacement) is not run.
        if loop is not None and loop._signal_handlers.get(self.signum) is self:
            self.callback(*self.args)


def _check_signum(signum: int) -> None:
    if not isinstance(signum, int):
        raise TypeError(f"signal number expected, got {signum!r}")
    if signum not in signal.valid_signals():
        raise ValueError(f"invalid signal number {signum}")
    if signum in _UNCATCHABLE:
        raise RuntimeError(f"signal {signum} cannot be caught")


def _check_main_thread(what: str) -> None:
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(f"{what} only works in the main thread")


def add_signal_handler(
    loop: Loop, signum: int, callback: Callable[..., object], *args: Any
) -> None:
    """See ``Loop.add_signal_handler``."""
    _check_signum(signum)
    _check_main_thread("add_signal_handler")
    loop._open_lp()
    handler = _PostingHandler(loop, signum, callback, args)
    existing = loop._signal_handlers.get(signum)
    guard = loop._guard
    if existing is not None:
        handler.previous = existing.previous
    else:
        previous = _signal.getsignal(signum)
        if guard is not None and signum in guard.handlers and previous == guard._defer:
            previous = guard.handlers[signum]  # run() stands in for it: the real one
        handler.previous = signal.SIG_DFL if previous is None else previous
    try:
        # Installed as is, also while run() runs: it never raises, so it needs no stand-in
        # (and run() leaves a handler that is not its stand-in alone when it returns).
        signal.signal(signum, handler)
    except OSError as exc:
        raise RuntimeError(f"signal {signum} cannot be caught: {exc}") from None
    loop._signal_handlers[signum] = handler


def remove_signal_handler(loop: Loop, signum: int) -> bool:
    """See ``Loop.remove_signal_handler``."""
    _check_signum(signum)
    _check_main_thread("remove_signal_handler")
    handler = loop._signal_handlers.pop(signum, None)
    if handler is None:
        return False
    guard = loop._guard
    if guard is not None and guard.handlers and callable(handler.previous):
        # run() is under way in this thread: its stand-in defers the handler put back (Ctrl-C's
        # KeyboardInterrupt then comes from run(), never from inside a step) until run() returns
        # and reinstalls it.
        guard.handlers[signum] = handler.previous
        signal.signal(signum, guard._defer)
    else:
        signal.signal(signum, handler.previous)
    return True


def remove_all(loop: Loop) -> None:
    """Loop.close(): every handler of the loop is removed, the previous ones put back."""
    if loop._signal_handlers and threading.current_thread() is threading.main_thread():
        for signum in list(loop._signal_handlers):
            remove_signal_handler(loop, signum)
    loop._signal_handlers.clear()


_WAKE_POLL_MS = 100  # bound on signal latency when no wakeup fd can be armed
_SIGNALS = tuple(signal.valid_signals())


class _SignalGuard:
    """Signal handling while a loop runs in the main thread (see the module docstring).

    * Every signal with a Python-level handler (SIGINT's ``default_int_handler``, a SIGTERM
      handler calling ``sys.exit``...) gets, for the duration, a stand-in that only queues the
      signal; run() calls the real handler between steps, from its own frame, so whatever it
      raises propagates from run(). A handler called inside a callback could raise before the
      trampoline's ``try`` and the exception would be lost (ctypes only prints it).
    * With ``wake``, the loop's wakeup pipe is made Python's wakeup fd, so a signal arriving at
      any instant wakes ``epoll_wait``. Without it (or if another wakeup fd is set, e.g.
      asyncio's), run() bounds each wait so a signal is noticed within ``_WAKE_POLL_MS``.
    * Leaving, the real handlers are put back and any signal still queued is raised again.
    """

    __slots__ = ("handlers", "loop", "pending", "timeout_ms", "woken")

    def __init__(self, loop: Loop, wake: bool) -> None:
        self.loop = loop
        self.handlers: dict[int, Any] = {}
        self.pending: list[int] = []
        self.woken = False  # our pipe is Python's wakeup fd
        self.timeout_ms = _ffi.WAIT_FOREVER_MS
        if threading.current_thread() is not threading.main_thread():
            return  # Python runs signal handlers in the main thread only
        for signum in _SIGNALS:
            handler = _signal.getsignal(signum)  # (signal.getsignal adds an enum conversion)
            if callable(handler):
                self.handlers[signum] = handler
                signal.signal(signum, self._defer)
        if wake and self.handlers:
            write_fd = wake_fd(loop)
            if write_fd >= 0:
                previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
                if previous == -1:
                    self.woken = loop._waking = True
                else:  # someone else's: leave it alone
                    signal.set_wakeup_fd(previous)
            if not self.woken:
                self.timeout_ms = _WAKE_POLL_MS

    def _defer(self, signum: int, _frame: object) -> None:
        self.pending.append(signum)

    def deliver(self) -> None:
        """Call the real handlers of the signals that arrived (they may raise)."""
        while self.pending:
            signum = self.pending.pop(0)
            self.handlers[signum](signum, None)

    def restore(self) -> None:
        if self.woken:
            signal.set_wakeup_fd(-1)
            self.woken = self.loop._waking = False
        for signum, handler in self.handlers.items():
            if signal.getsignal(signum) == self._defer:  # unless a handler replaced it meanwhile
                signal.signal(signum, handler)
        self.handlers.clear()
        pending, self.pending = self.pending, []
        for signum in pending:
            signal.raise_signal(signum)  # the real handler runs as soon as run() returns


def wake_fd(loop: Loop) -> int:
    """The write end of ``loop``'s wakeup pipe (Python's wakeup fd while ``run()`` runs),
    registered (EP_UNREF: it keeps nothing alive) on first use; -1 if it cannot be had."""
    if loop._wake_pipe is None:
        loop._wake_pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    if not loop._wake_id:
        flags = _ffi.EP_BORROW | _ffi.EP_QUEUE | _ffi.EP_UNREF
        code = lib.ep_register(loop._lp, loop._wake_pipe[0], flags, None, loop._key)
        if code < 0:
            return -1
        loop._wake_id = code
    return loop._wake_pipe[1]
