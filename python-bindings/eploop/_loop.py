"""The Pythonic layer's centre: ``Loop``. (Registrations are in ``_registration`` and
``_connection``, handlers in ``_handler``, errors in ``_errors``, the step in ``_events``.)

How events reach Python (one ``ep_poll()`` per step, two trampolines): see ``_events``. Each
loop keeps its registrations in a dict keyed by ``ep_id`` (ids are never reused).

Exception policy (asyncio's): a handler method, handler factory, timer or
``call_soon_threadsafe`` callback that raises an ``Exception`` has a bug; the peer never causes
one (``send()`` and friends never raise because of the peer). The connection whose handler
raised is aborted (RST: its state is suspect, so the peer must not take what it got as
complete) and gets nothing more but its one ``on_close``; the exception goes to the loop's
exception handler (``Loop.set_exception_handler``), whose default logs it with its traceback
through ``logging.getLogger("eploop")``; the loop keeps serving. An exception handler that
raises (``eploop.reraise`` does) makes ``run()`` raise that exception once the step's other
events are delivered. A ``BaseException`` that is not an ``Exception`` (``KeyboardInterrupt``,
``SystemExit``) skips the exception handler and is raised by ``run()`` at the end of the step.

Step semantics (as C's callbacks): events of one step are fetched together, so the binding
enforces what C enforces between callbacks. After ``close()``/``abort()`` (or a raise) the
connection's remaining events of the step are skipped, but for its ``on_close``. After
``pause_reading()``, its data already fetched is held (per connection, in order, an EOF behind
it too) and delivered after ``resume_reading()``, at the end of the step in which it was called;
a close that ends the connection meanwhile delivers the held data first, as C's read loop
ignores a pause once the connection cannot live on.

Signals (Ctrl-C) while ``run()`` runs: deferred to between steps, see ``_signals._SignalGuard``.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import weakref
from collections.abc import Callable
from ctypes import byref, c_char
from typing import Any, cast

from . import _aio, _events, _ffi, _signals
from ._connection import Connection
from ._datagram import DatagramEndpoint, _DatagramHosting
from ._errors import (
    CloseReason,
    ClosingError,
    EploopError,
    ForkedLoopError,
    RunResult,
    StaleError,
    WrongThreadError,
    _error,
    reraise,
)
from ._events import (
    _MORE,
    _RESULT,
    _TIMER_TRAMPOLINE,
    _closed,
    _loop_keys,
    _loops,
    _Stepping,
)
from ._ffi import lib
from ._handler import ConnectionHandler, Handler, HandlerFactory, _ExceptionHandling
from ._registration import Listener, Timer, _is_listening, _ms, _Registration
from ._signals import _SignalGuard
from ._stats import Stats, read_stats

__all__ = [
    "CloseReason",
    "ClosingError",
    "Connection",
    "DatagramEndpoint",
    "EploopError",
    "ForkedLoopError",
    "Handler",
    "Listener",
    "Loop",
    "RunResult",
    "StaleError",
    "Stats",
    "Timer",
    "WrongThreadError",
    "reraise",
]


class Loop(_ExceptionHandling, _aio._AsyncioHosting, _DatagramHosting, _Stepping):
    """An epoll event loop; a context manager that closes every connection on exit.

    A loop is used by one thread at a time, normally the one that runs it. Only ``stop()`` and
    ``call_soon_threadsafe()`` may be called from other threads (``stop()`` also from a signal
    handler); any other call made while another thread is using the loop raises
    ``WrongThreadError`` (a ``RuntimeError``). ``Listener.port`` is read at listen time and may
    be read from anywhere.
    """

    def __init__(self, *, linger: float | None = None) -> None:
        address = lib.ep_loop_new().value  # (a _ffi.LoopPtr)
        if not address:
            raise OSError(errno.ENOMEM, "ep_loop_new failed")
        # The loop pointer as ctypes passes it cheapest, with or without argtypes: a byref()
        # to a byte at that address is a `char *` whose value is the loop pointer.
        self._lp: Any = byref(c_char.from_address(address))  # None once closed
        self._key = next(_loop_keys)
        self._registrations: dict[int, _Registration] = {}
        self._timers: dict[int, Timer] = {}
        self._error: BaseException | None = None  # for run() to raise at the end of the step
        self._exception_handler: Callable[[Loop, dict[str, Any]], object] | None = None
        self._callback_failures: list[tuple[BaseException, str, Any]] = []  # from inside C
        self._resumed: list[Connection] = []  # resume_reading() with data held: deliver it
        self._running = False
        self._lock = threading.RLock()  # orders stop() from other threads against close()
        self._wake_pipe: tuple[int, int] | None = None
        self._wake_id = 0  # the wakeup pipe's registration (EP_UNREF), once made
        self._waking = False  # run() made the pipe Python's wakeup fd
        self._signal_handlers: dict[int, Any] = {}  # add_signal_handler's, see _signals.py
        self._guard: _SignalGuard | None = None  # run()'s, while it runs
        self._driver: _aio._Driver | None = None  # the asyncio loop driving it (attach())
        self._init_stepping(address)
        _loops[self._key] = weakref.ref(self)
        if linger is not None:
            self.set_linger(linger)

    # -- context manager and lifetime

    def __enter__(self) -> Loop:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:  # a loop nobody closed; at exit, module globals may be gone
        lp = getattr(self, "_lp", None)
        if lp is not None and lib is not None and _loops is not None:
            self._lp = None
            _loops.pop(self._key, None)  # nobody is left to hear: no handler runs
            lib.ep_loop_free(lp)
        if getattr(self, "_wake_pipe", None) and os is not None:
            for fd in self._wake_pipe:  # type: ignore[union-attr]
                os.close(fd)

    @property
    def closed(self) -> bool:
        return self._lp is None

    def close(self) -> None:
        """Close every connection and free the loop. Idempotent.

        Closes already under way are delivered first (one more step, without waiting); every
        connection still open then gets ``on_close(LOOP_FREED)``. A handler raising meanwhile
        goes to the exception handler; raises what that raised (see ``run()``).
        """
        if self._running:
            raise RuntimeError("Loop.close() called while the loop is running (use stop())")
        with self._lock:
            lp = self._lp
            if lp is None:
                return
            _signals.remove_all(self)
            self.detach()
            self._start_running()
            try:
                self._settle()
            except ForkedLoopError:
                pass  # a child's copy of the loop: ep_loop_free alone is allowed, and enough
            except BaseException as exc:
                self._fatal(exc)
            finally:
                self._stopped_running()
                lib.ep_loop_free(lp)  # EP_QUEUE registrations: nothing is called back
                self._lp = None
                self._call.lp = None
                _loops.pop(self._key, None)
                still_open = list(self._registrations.values())
                self._registrations.clear()
                self._resumed.clear()
                for registration in still_open:
                    _closed(registration, CloseReason.LOOP_FREED, 0)
                self._timers.clear()
                if self._wake_pipe is not None:
                    for fd in self._wake_pipe:
                        os.close(fd)
                    self._wake_pipe = None
        self._raise_pending()

    def _settle(self) -> None:
        """Deliver what is already decided (a close() with nothing left to flush, data that
        arrived) before the loop is freed: a few steps without waiting, until one is quiet."""
        for _ in range(3):
            self._step(0)
            if not _RESULT.unpack_from(self._result_view)[1]:
                return

    def _open_lp(self) -> Any:
        if self._lp is None:
            raise ValueError("the loop is closed")
        return self._lp

    # -- registering

    def listen(
        self,
        addr: tuple[str, int] | str | socket.socket,
        handler_factory: HandlerFactory,
        *,
        backlog: int = 0,
        edge: bool = False,
        half_close: bool = False,
        reuse_port: bool = False,
        auto_pause: bool = False,
    ) -> Listener:
        """Listen on ``(host, port)``, on a Unix socket path, or adopt a listening socket.

        ``host`` is a numeric IPv4/IPv6 address, ``"localhost"``, or ``""`` for every address;
        port 0 picks a free one (see ``Listener.port``). A ``str`` is a Unix socket path (a
        leading ``@`` names an abstract socket). ``backlog`` <= 0 means SOMAXCONN.
        ``reuse_port`` sets SO_REUSEPORT so several loops (threads) can share the port.
        ``auto_pause`` (EP_AUTO_PAUSE): each connection stops reading while its send queue is
        above the high-water mark and resumes below the low one (see README, backpressure).
        ``handler_factory()`` is called once per accepted connection and returns its handler.
        With ``half_close``, the peer's FIN is ``handler.on_eof()`` and the connection stays
        open for sending until it is closed; without it, FIN ends the connection (PEER_EOF).
        """
        if isinstance(addr, socket.socket):
            return self._register(
                addr, handler_factory, edge=edge, half_close=half_close, listening=True
            )  # type: ignore[return-value]
        flags = self._flags(edge, half_close) | (_ffi.EP_REUSEPORT if reuse_port else 0)
        flags |= _ffi.EP_AUTO_PAUSE if auto_pause else 0
        lp = self._open_lp()
        if isinstance(addr, str):
            code = lib.ep_listen_unix(lp, addr.encode(), backlog, flags, None, self._key)
        else:
            host, port = addr
            code = lib.ep_listen(lp, host.encode(), port, backlog, flags, None, self._key)
        if code < 0:
            raise _error(code, f"listen {addr!r}")
        listener = Listener(self, code, handler_factory, half_close)
        self._registrations[code] = listener
        return listener

    def connect(
        self,
        addr: tuple[str, int] | str,
        handler: ConnectionHandler,
        *,
        timeout: float | None = None,
        edge: bool = False,
        half_close: bool = False,
    ) -> Connection:
        """Connect to ``(host, port)`` or a Unix socket path without blocking; returns the
        Connection at once. ``host`` is a numeric address or a name ("localhost"), resolved
        off the loop's thread (getaddrinfo) and tried address by address.

        ``handler.on_accept()`` runs once connected; a failure (refused, unreachable) is the
        connection's one ``on_close`` (ERROR or PEER_RESET with the errno; for a name that does
        not resolve ERROR with an ``err`` above 4100, named by ``eploop._ffi.strerror(-err)``),
        and after ``timeout`` seconds ``on_close(TIMEOUT)``. What you ``send()`` before is queued.
        """
        lp = self._open_lp()
        timeout_ms = _ms(timeout) if timeout else 0
        flags = self._flags(edge, half_close)
        if isinstance(addr, str):
            code = lib.ep_connect_unix(lp, addr.encode(), timeout_ms, flags, None, self._key)
        else:
            host, port = addr
            code = lib.ep_connect(lp, host.encode(), port, timeout_ms, flags, None, self._key)
        if code < 0:
            raise _error(code, f"connect {addr!r}")
        conn = Connection(self, code)
        conn._attach(handler, half_close)
        self._registrations[code] = conn
        self._kick()
        return conn

    def register(
        self,
        sock_or_fd: Any,
        handler: ConnectionHandler | HandlerFactory,
        *,
        edge: bool = False,
        half_close: bool = False,
    ) -> Any:
        """Adopt a connected socket, pipe, tty... (or a listening socket) into the loop.

        Pass the socket (or file) object you created: the loop borrows its fd and keeps the
        object alive until ``on_close``; it never closes it, and you must not close it while it
        is registered. A plain int fd is handed over instead: the loop owns and closes it.

        For a connected stream, ``handler`` is its handler object and a ``Connection`` is
        returned (``on_accept`` is not called). For a listening socket, ``handler`` is a
        handler factory, as for ``listen()``, and a ``Listener`` is returned.
        """
        return self._register(sock_or_fd, handler, edge=edge, half_close=half_close, listening=None)

    def _register(
        self,
        sock_or_fd: Any,
        handler: ConnectionHandler | HandlerFactory,
        *,
        edge: bool,
        half_close: bool,
        listening: bool | None,
    ) -> Connection | Listener:
        lp = self._open_lp()
        if isinstance(sock_or_fd, int):
            fd, borrowed, flags = sock_or_fd, None, 0
        else:
            fd, borrowed, flags = sock_or_fd.fileno(), sock_or_fd, _ffi.EP_BORROW
        is_listener = _is_listening(fd)
        if listening and not is_listener:
            raise ValueError("listen() needs a listening socket (call sock.listen() first)")
        flags |= self._flags(edge, half_close)
        code = lib.ep_register(lp, fd, flags, None, self._key)
        if code < 0:
            raise _error(code, "ep_register")
        registration: Connection | Listener
        if is_listener:
            # (duck-typed at run time, as ever: a listening socket's handler is its factory)
            registration = Listener(self, code, cast(HandlerFactory, handler), half_close, borrowed)
        else:
            registration = Connection(self, code, borrowed)
            registration._wfd = -2  # (any fd: a pipe's write(2) is not a send(MSG_NOSIGNAL))
            registration._attach(handler, half_close)
        self._registrations[code] = registration
        return registration

    @staticmethod
    def _flags(edge: bool, half_close: bool) -> int:
        # EP_QUEUE: events come back from ep_poll(), see _step.
        return (
            _ffi.EP_QUEUE
            | (_ffi.EP_EDGE if edge else 0)
            | (_ffi.EP_HALF_CLOSE if half_close else 0)
        )

    @property
    def connections(self) -> list[Connection]:
        """The open connections."""
        return [r for r in self._registrations.values() if isinstance(r, Connection)]

    def set_linger(self, seconds: float) -> None:
        """Bound how long a graceful close may flush and then linger (default 5 s)."""
        lib.ep_set_linger(self._open_lp(), _ms(seconds))

    # -- timers, other threads, shutdown, counters

    def call_later(
        self, delay: float, callback: Callable[[], object], *, repeat: float | None = None
    ) -> Timer:
        """Run ``callback()`` on the loop's thread after ``delay`` seconds, then every
        ``repeat`` seconds if given (at a fixed rate). A pending timer keeps ``run()`` going.
        An exception from ``callback`` goes to the exception handler."""
        lp = self._open_lp()
        code = lib.ep_timer_start(
            lp, _ms(delay), _ms(repeat) if repeat else 0, _TIMER_TRAMPOLINE, self._key
        )
        if code < 0:
            raise _error(code, "ep_timer_start")
        timer = Timer(self, code, callback, repeat)
        self._timers[code] = timer
        self._kick()
        return timer

    def call_soon_threadsafe(self, callback: Callable[[], object]) -> None:
        """Run ``callback()`` on the loop's thread at its next step (from any thread)."""
        _events.post_soon(self, callback)

    def add_signal_handler(self, signum: int, callback: Callable[..., object], *args: Any) -> None:
        """Call ``callback(*args)`` on the loop's thread, in a step of ``run()``, each time
        signal ``signum`` arrives (as asyncio's loop does); it replaces a handler of ``signum``
        set here before. Main thread only (RuntimeError otherwise, and for SIGKILL/SIGSTOP;
        ValueError for an invalid number). Does not keep ``run()`` running. With a SIGINT
        handler, Ctrl-C calls it instead of raising ``KeyboardInterrupt``. See ``_signals``."""
        _signals.add_signal_handler(self, signum, callback, *args)

    def remove_signal_handler(self, signum: int) -> bool:
        """Remove the handler of ``signum`` set with ``add_signal_handler`` and put back the
        one that was there before (``close()`` does it for all). False if none was set."""
        return _signals.remove_signal_handler(self, signum)

    def drain(self, grace: float) -> None:
        """Graceful shutdown: close every listener now, give open connections ``grace`` seconds
        to finish, then close the rest gracefully; ``run()`` returns once nothing is left."""
        code = lib.ep_drain(self._open_lp(), _ms(grace))
        if code < 0:
            raise _error(code, "ep_drain")
        self._kick()

    def stats(self) -> Stats:
        """The loop's counters."""
        return read_stats(self._open_lp(), self._direct_out)

    # -- running

    def run(self) -> RunResult:
        """Run until ``stop()`` (returns ``RunResult.STOPPED``) or until the loop is out of work
        (``RunResult.EMPTY``): nothing registered, no timer, nothing pending, once the handlers
        of the last step have run (an ``on_close`` that reconnects or starts a timer keeps it
        running).

        A handler's exception goes to the exception handler (``set_exception_handler``);
        whatever that raises is raised here. Ctrl-C raises ``KeyboardInterrupt`` from here,
        never from inside a handler; a ``with Loop()`` block then closes every connection.
        """
        self._open_lp()
        self._enter()
        guard = self._guard = _SignalGuard(self, wake=True)
        timeout_ms = guard.timeout_ms
        step = self._step
        try:
            while True:
                if guard.pending:  # (also one that came before the wakeup fd was set)
                    guard.deliver()
                state = step(timeout_ms)
                if state != _MORE:
                    break
            if guard.pending:
                guard.deliver()
        finally:
            self._guard = None
            guard.restore()
            self._stopped_running()
        return RunResult(state)

    def run_once(self, timeout: float | None = None) -> RunResult:
        """Wait up to ``timeout`` seconds (None: until something happens) and dispatch.

        Returns ``MORE``, ``STOPPED`` or ``EMPTY`` (the loop had nothing to do; a step whose
        handlers ran returns ``MORE``: they may have made work). Raises like ``run()``. A signal
        that interrupts the wait returns ``RunResult.MORE`` after Python has run its handler.
        """
        self._open_lp()
        self._enter()
        guard = self._guard = _SignalGuard(self, wake=False)
        try:
            state = self._step(_ffi.WAIT_FOREVER_MS if timeout is None else _ms(timeout))
            guard.deliver()
        finally:
            self._guard = None
            guard.restore()
            self._stopped_running()
        return RunResult(state)

    # The step (one ep_poll() and its handlers) and its helpers live in _events.
    _step = _events.step
    _event_failed = _events.event_failed
    _deliver_resumed = _events.deliver_resumed
    _timer_failures = _events.timer_failures

    def stop(self) -> None:
        """Make ``run()`` return after the current step (a request made while the loop is not
        running stops the next ``run()``). Any thread; safe in signal handlers."""
        with self._lock:
            if self._lp is not None:
                lib.ep_stop(self._lp)
                driver = self._driver
                if driver is not None:  # (the C loop's stop flag has no descriptor event)
                    driver.aio.call_soon_threadsafe(driver.soon)

    def _enter(self) -> None:
        if self._running:
            raise _error(_ffi.EP_EBUSY, "run")
        if self._driver is not None:
            raise RuntimeError("the loop is attached to asyncio: await loop.serve(), or detach()")
        self._start_running()

    def _raise_pending(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self._registrations)} registrations"
        return f"<eploop.Loop {state}>"

