"""The Pythonic layer: Loop, Listener, Connection, Handler, CloseReason, errors.

How events reach Python: every registration is made with EP_QUEUE, so during a loop step the
library records events instead of calling back, and one ``ep_poll()`` call per step hands them
all over (an array of ``ep_event`` and one data buffer, read here through memoryviews). The
handlers then run in Python, in the order callbacks would have run. Only timers and
``call_soon_threadsafe`` callbacks come through ctypes callbacks: two ``CFUNCTYPE`` objects
created once, at import, kept at module level, whose ``user`` pointer is an integer key, so
nothing C can call or hold is ever garbage-collected. Each loop keeps its registrations in a
dict keyed by ``ep_id`` (ids are never reused).

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

Signals (Ctrl-C): while ``run()``/``run_once()`` runs in the main thread, Python-level signal
handlers are deferred: a signal is queued and its real handler called from ``run()`` itself
between steps, so ``KeyboardInterrupt`` (or ``SystemExit`` from a SIGTERM handler) propagates
from ``run()``, never from the middle of a step, where it would lose the step's other events
(or, inside a timer callback, be swallowed by ctypes). During ``run()``,
``signal.set_wakeup_fd`` points at a pipe the loop watches (registered once, with EP_UNREF, so
it neither keeps the loop alive nor shows in ``stats()``), so a signal arriving at any instant
wakes ``epoll_wait`` at once.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # getsignal without the enum conversion
import ctypes
import dataclasses
import enum
import errno
import itertools
import logging
import math
import os
import signal
import socket
import struct
import threading
import weakref
from collections import deque
from collections.abc import Callable
from ctypes import byref, c_char, c_size_t, c_uint64
from typing import Any

from . import _ffi, _send, _signals
from ._ffi import hot, lib

__all__ = [
    "CloseReason",
    "ClosingError",
    "Connection",
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

logger = logging.getLogger("eploop")


class CloseReason(enum.IntEnum):
    """Why a connection ended (``ep_close_reason``); ``str()`` gives the event-log name."""

    PEER_EOF = 1  #: the peer closed its side (FIN)
    PEER_RESET = 2  #: ECONNRESET / ECONNABORTED / EPIPE (RST)
    ERROR = 3  #: another I/O error; ``errno`` tells which
    LOCAL = 4  #: ``close()`` finished: everything queued was handed to the kernel, FIN sent
    ABORT = 5  #: ``abort()``: RST sent, queue dropped
    TIMEOUT = 6  #: a graceful close could not flush within the linger time
    LOOP_FREED = 7  #: the loop was closed while the connection was open

    def __str__(self) -> str:
        return self.name.lower()


class RunResult(enum.IntEnum):
    """Why ``Loop.run()`` returned, or what ``Loop.run_once()`` found."""

    EMPTY = _ffi.EP_RUN_EMPTY  #: out of work: nothing registered, no timer, nothing pending
    MORE = _ffi.EP_RUN_MORE  #: (run_once) there may be more to do
    STOPPED = _ffi.EP_RUN_STOPPED  #: ``stop()`` was called


_REASONS: dict[int, Any] = {reason.value: reason for reason in CloseReason}


class EploopError(OSError):
    """A negative result from libeploop.

    ``errno`` is the positive error number (an ``errno`` value such as ``EADDRINUSE``, or
    4001..4008 for the library's own codes), ``strerror`` is ``ep_strerror``'s text and ``code``
    the raw negative value the C function returned.
    """

    def __init__(self, code: int, function: str) -> None:
        super().__init__(-code, _ffi.strerror(code))
        self.code = code
        self.function = function

    def __str__(self) -> str:
        return f"[Errno {self.errno}] {self.function}: {self.strerror}"


class StaleError(EploopError):
    """The connection or listener has already ended (its ``on_close`` ran): EP_ESTALE."""


class ClosingError(EploopError):
    """You already called ``close()`` or ``abort()`` on this connection: EP_ECLOSING."""


class WrongThreadError(EploopError, RuntimeError):
    """The loop was called from a thread while another thread was using it: EP_ETHREAD."""

    rule = (
        "a loop is used by one thread at a time; "
        "only stop() and call_soon_threadsafe() may be called from another thread"
    )

    def __str__(self) -> str:
        return f"[Errno {self.errno}] {self.function}: {self.strerror} ({self.rule})"


class ForkedLoopError(WrongThreadError):
    """The loop was inherited across ``fork()``: in the child only ``close()`` works: EP_EFORK."""

    rule = "a loop inherited across fork() can only be closed in the child process"


def _error(code: int, function: str) -> EploopError:
    if code == _ffi.EP_ESTALE:
        return StaleError(code, function)
    if code == _ffi.EP_ECLOSING:
        return ClosingError(code, function)
    if code == _ffi.EP_ETHREAD:
        return WrongThreadError(code, function)
    if code == _ffi.EP_EFORK:
        return ForkedLoopError(code, function)
    return EploopError(code, function)


def reraise(loop: Loop, context: dict[str, Any]) -> None:
    """An exception handler that stops ``run()`` and makes it raise the handler's exception:
    ``loop.set_exception_handler(eploop.reraise)`` (for scripts and tests)."""
    raise context["exception"]


# ---------------------------------------------------------------------------------------------
# Handlers


class Handler:
    """Base class for connection handlers: subclass it and override what you need.

    One handler object serves one connection; ``self.conn`` is set before any method runs.
    Methods run on the loop's thread and must not block. Any of them may call any ``Connection``
    or ``Loop`` method except ``run``/``run_once``/``close`` of its own loop.
    """

    conn: Connection

    def on_accept(self) -> None:
        """The connection is up: a listener accepted it, or ``Loop.connect`` succeeded.

        Not called for ``Loop.register``: a socket you register is connected already.
        """

    def on_data(self, data: bytes) -> None:
        """Bytes arrived (never empty)."""

    def on_eof(self) -> None:
        """The peer sent FIN (only with ``half_close=True``); we can still send.

        The default closes gracefully once everything queued is flushed.
        """
        self.conn.close()

    def on_writable(self) -> None:
        """The send queue drained to its low-water mark after ``send()`` returned False."""

    def on_close(self, reason: CloseReason, errno: int) -> None:
        """The connection ended; called exactly once, after every byte was delivered."""


def _ignore(*_args: object) -> None:
    pass


def _ms(seconds: float) -> int:
    """Seconds to whole milliseconds, rounded up so a short wait never becomes a busy poll."""
    return max(0, math.ceil(seconds * 1000))


# ---------------------------------------------------------------------------------------------
# Registrations


def _with_socket(fd: int, use: Callable[[socket.socket], Any]) -> Any:
    """Apply ``use`` to a temporary socket object over ``fd`` without ever closing ``fd``."""
    sock = socket.socket(fileno=fd)
    try:
        return use(sock)
    finally:
        sock.detach()


_UNKNOWN_PEERS = {socket.AF_INET: ("0.0.0.0", 0), socket.AF_INET6: ("::", 0, 0, 0)}


def _peer_address(sock: socket.socket) -> Any:
    try:
        return sock.getpeername()
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise
        return _UNKNOWN_PEERS.get(sock.family, "")


_ID_BASE = c_char()
_ID_BASE_ADDRESS = ctypes.addressof(_ID_BASE)
_LP64 = ctypes.sizeof(ctypes.c_void_p) == ctypes.sizeof(c_uint64)


def _id_arg(reg_id: int) -> Any:
    """An ep_id as the hot calls (no argtypes) take it, built once per registration.

    A ``byref()`` whose pointer value is the id: ctypes passes it as it is, where a
    ``c_uint64`` costs an allocation per call; on LP64 (x86-64, aarch64) a pointer and a
    ``uint64_t`` argument are passed alike, in one integer register. Elsewhere: a c_uint64.
    """
    if _LP64:
        return byref(_ID_BASE, reg_id - _ID_BASE_ADDRESS)
    return c_uint64(reg_id)


def _option_socket(fd: int) -> socket.socket:
    """A socket object over ``fd`` for setsockopt/getsockopt only (detach it after use): given
    family, type and protocol, Python does not ask the kernel for them (it would for addresses,
    whose format depends on the real family; see ``_with_socket``)."""
    return socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fd)


class _Registration:
    """What listeners and connections share: an id in a loop, and its fd."""

    __slots__ = ("__weakref__", "_borrowed", "_cid", "_fd", "_lp", "id", "loop")

    def __init__(self, loop: Loop, reg_id: int, borrowed: object = None) -> None:
        self.loop = loop
        self.id = reg_id
        self._cid = _id_arg(reg_id)  # the id as the C functions without argtypes take it
        self._lp: Any = loop._lp  # the loop pointer (see Loop); None once on_close ran
        self._borrowed = borrowed  # the caller's socket/file object, kept alive while registered
        self._fd = -1  # cached by fileno(): a registration's fd never changes

    @property
    def closed(self) -> bool:
        """True once ``on_close`` has run."""
        return self._lp is None

    def _check(self, code: int, function: str) -> int:
        if code < 0:
            if self._lp is None:
                code = _ffi.EP_ESTALE
            raise _error(code, function)
        return code

    def _ended_by_loop(self, code: int) -> bool:
        """``code`` only says that the library already ended the registration, for a reason
        that is not the caller's doing, and the binding has yet to deliver its ``on_close``.

        With EP_QUEUE, the library decides a close (a reset, an error) in the step that fetched
        it, so during that step's handlers the id is already stale in C while its on_close is
        still ahead in Python: a callback host would have seen the call succeed (one channel).
        """
        return False

    def _lenient(self, code: int, function: str) -> int:
        """``_check`` for calls that must not fail because the peer is gone."""
        if code < 0 and self._ended_by_loop(code):
            return 0
        return self._check(code, function)

    def fileno(self) -> int:
        """The fd (owned by the loop: do not close it or change its blocking mode)."""
        if self._fd < 0 or self._lp is None:
            self._fd = self._check(_ep_fd(self._lp, self._cid), "ep_fd")
        return self._fd

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        """``socket.setsockopt`` on the connection's socket (TCP_NODELAY, TCP_CORK, ...)."""
        sock = _option_socket(self.fileno())
        try:
            sock.setsockopt(level, option, value)
        finally:
            sock.detach()

    def getsockopt(self, level: int, option: int, buflen: int = 0) -> Any:
        """``socket.getsockopt`` on the connection's socket."""
        sock = _option_socket(self.fileno())
        try:
            return (
                sock.getsockopt(level, option, buflen) if buflen else sock.getsockopt(level, option)
            )
        finally:
            sock.detach()

    @property
    def sockname(self) -> Any:
        """The local address, as ``socket.getsockname()`` gives it."""
        return _with_socket(self.fileno(), lambda s: s.getsockname())

    def set_idle_timeout(self, seconds: float | None) -> None:
        """End the connection with ``on_close(TIMEOUT, ETIMEDOUT)`` after ``seconds`` without a
        byte read or written (None disables). On a listener: for the connections it accepts."""
        self._lenient(
            lib.ep_set_idle_timeout(self._lp, self.id, _ms(seconds or 0)), "ep_set_idle_timeout"
        )

    def set_watermarks(self, low: int, high: int) -> None:
        """Flow-control thresholds in bytes (default 16 KiB / 64 KiB): ``send()`` returns False
        above ``high``; ``on_writable`` fires at ``low``. On a listener: for its connections."""
        self._lenient(lib.ep_set_watermarks(self._lp, self.id, low, high), "ep_set_watermarks")

    def _ended(self) -> None:
        self._lp = None
        self._borrowed = None


class Listener(_Registration):
    """A listening socket; every connection it accepts gets a handler from ``factory()``."""

    __slots__ = ("_port", "factory", "half_close")

    def __init__(
        self,
        loop: Loop,
        reg_id: int,
        factory: Callable[[], Any],
        half_close: bool,
        borrowed: object = None,
    ) -> None:
        super().__init__(loop, reg_id, borrowed)
        self.factory = factory
        self.half_close = half_close
        # Read once, here, on the thread setting the loop up: reading it later (say from a test's
        # main thread while another thread runs the loop) must not be a call into the loop.
        self._port: int = lib.ep_local_port(self._lp, self.id)

    @property
    def port(self) -> int:
        """The port it listens on (useful after listening on port 0); any thread may read it.
        Raises ``EploopError`` (EAFNOSUPPORT) for a Unix socket."""
        if self._port < 0:
            raise _error(self._port, "ep_local_port")
        return self._port

    def close(self) -> None:
        """Stop listening; connections already accepted are not affected. Idempotent."""
        if self._lp is not None:
            code = lib.ep_close(self._lp, self.id)
            if code not in (0, _ffi.EP_ESTALE, _ffi.EP_ECLOSING):
                raise _error(code, "ep_close")

    def pause(self) -> None:
        """Stop accepting (connections wait in the kernel backlog)."""
        self._check(lib.ep_pause_reading(self._lp, self.id), "ep_pause_reading")

    def resume(self) -> None:
        """Accept again after ``pause()``."""
        self._check(lib.ep_resume_reading(self._lp, self.id), "ep_resume_reading")

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"port={self._port}" if self._port >= 0 else "open"
        return f"<eploop.Listener id={self.id} {state}>"


class _PyBuffer(ctypes.Structure):
    """CPython's ``Py_buffer`` (stable ABI since 3.11): a pointer into a read-only buffer."""

    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = (ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int)
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = (ctypes.POINTER(_PyBuffer),)
_release_buffer.restype = None

# The hot calls, without argtypes (see _ffi): the loop as Loop._lp, ids as _id_arg() made them.
_ep_poll = hot.ep_poll
_ep_send = hot.ep_send
_ep_close = hot.ep_close
_ep_abort = hot.ep_abort
_ep_pause = hot.ep_pause_reading
_ep_resume = hot.ep_resume_reading
_ep_fd = hot.ep_fd

_INT_MAX = 2**31 - 1  # a larger length must be passed as a c_size_t


class Connection(_Registration):
    """One connected stream (or pipe/tty) in a loop.

    ``handler`` is its handler object (None once ``on_close`` has run); ``user`` is free for
    application state.
    """

    __slots__ = (
        "_half_close",
        "_held",
        "_muted",
        "_on_data",
        "_on_eof",
        "_paused",
        "_peername",
        "_user_ended",
        "handler",
        "user",
    )

    def __init__(self, loop: Loop, reg_id: int, borrowed: object = None) -> None:
        # (_Registration's fields set here directly: one connection is made per accept)
        self.loop = loop
        self.id = reg_id
        self._cid = _id_arg(reg_id)
        self._lp = loop._lp
        self._borrowed = borrowed
        self._fd = -1
        self.handler: Any = None
        self.user: Any = None
        self._peername: Any = None
        # Bound once: on_data is the hot call. (The rarer methods are looked up when needed,
        # which keeps an idle connection smaller.)
        self._on_data: Callable[[bytes], object] = _ignore
        self._on_eof: Callable[[], object] = _ignore  # (the peer's EOF: with half_close only)
        self._half_close = False
        # Step semantics (see the module docstring): muted once close()/abort() was called or
        # a handler raised; while paused (or until the held data is delivered), _on_data and
        # _on_eof append to _held instead of calling the handler.
        self._muted = False
        self._user_ended = False  # close() or abort() was called (not: a handler raised)
        self._paused = False
        self._held: deque[bytes] | None = None  # data held; b"" is the peer's EOF

    def _attach(self, handler: Any, half_close: bool) -> None:
        handler.conn = self
        self.handler = handler
        self._half_close = half_close
        self._deliver_to_handler()

    def _deliver_to_handler(self) -> None:
        handler = self.handler
        self._on_data = getattr(handler, "on_data", _ignore)
        if self._half_close:
            self._on_eof = getattr(handler, "on_eof", self.close)

    def _hold(self, data: bytes) -> None:
        self._held.append(data)  # type: ignore[union-attr]

    def _hold_eof(self) -> None:
        self._held.append(b"")  # type: ignore[union-attr]

    def _mute(self) -> None:
        """Nothing more but on_close: what the step still holds for it is skipped."""
        self._muted = True
        self._paused = False
        self._held = None
        self._on_data = self._on_eof = _ignore

    def _deliver_held(self, forced: bool) -> None:
        """Deliver the held data, in order, while reading is not paused (``forced``: the
        connection is ending, so it all goes now, pause or not, before its on_close)."""
        held = self._held
        while held and not self._muted and (forced or not self._paused):
            data = held.popleft()
            try:
                if data:
                    getattr(self.handler, "on_data", _ignore)(data)
                elif self._half_close:
                    getattr(self.handler, "on_eof", self.close)()
            except BaseException as exc:
                self.loop._handler_failed(self, exc, "on_data" if data else "on_eof")
            held = self._held
        if not self._muted and not self._held and not self._paused:
            self._held = None
            self._deliver_to_handler()

    def _ended_by_loop(self, code: int) -> bool:
        return (
            (code == _ffi.EP_ESTALE or code == _ffi.EP_ECLOSING)
            and self._lp is not None
            and not self._user_ended
        )

    def send(self, data: bytes | bytearray | memoryview) -> bool:
        """Queue ``data`` (any bytes-like object) for sending; never blocks, never partial.

        Returns True while the send queue is at or below its high-water mark, False once it is
        above, or once the peer is gone (the bytes are then discarded; its ``on_close`` is on
        the way): stop producing (and wait for ``on_writable``). Never raises because of the
        peer: only for your own mistakes: ``StaleError`` after ``on_close``, ``ClosingError``
        after your ``close()``/``abort()``, ``EploopError`` otherwise (e.g. ENOBUFS beyond the
        1 GiB queue cap, ESHUTDOWN after your ``shutdown()``).
        """
        if type(data) is bytes:
            size = len(data)
            code = _ep_send(self._lp, self._cid, data, size if size <= _INT_MAX else c_size_t(size))
        else:
            code = self._send_buffer(data)
        if code == 0:
            return True
        if code == 1 or self._ended_by_loop(code):
            return False
        return bool(self._check(code, "ep_send"))

    def _send_buffer(self, data: Any) -> int:
        view = memoryview(data)
        size = view.nbytes
        length = size if size <= _INT_MAX else c_size_t(size)
        if size == 0:
            return _ep_send(self._lp, self._cid, None, 0)  # type: ignore[no-any-return]
        if not view.c_contiguous:
            raise BufferError("send() needs a C-contiguous buffer")
        if not view.readonly:
            return _ep_send(self._lp, self._cid, byref(c_char.from_buffer(view)), length)  # type: ignore[no-any-return]
        buffer = _PyBuffer()
        _get_buffer(view, byref(buffer), 0)
        try:
            return _ep_send(self._lp, self._cid, ctypes.c_void_p(buffer.buf), length)  # type: ignore[no-any-return]
        finally:
            _release_buffer(byref(buffer))

    def send_many(self, buffers: Any) -> bool:
        """Send several bytes-like objects as one unit, like ``writelines`` (see _send)."""
        return _send.send_many(self, buffers)

    def send_nocopy(self, data: Any) -> bool:
        """Send ``data`` without copying; it is referenced until sent. (see _send)"""
        return _send.send_nocopy(self, data)

    def send_file(self, file: Any, offset: int = 0, count: int | None = None) -> bool:
        """Send a file's bytes with sendfile(2), like ``loop.sendfile`` (see _send)."""
        return _send.send_file(self, file, offset, count)

    def shutdown(self) -> None:
        """Send FIN once the queue is flushed; keep reading until the peer closes too."""
        self._lenient(lib.ep_shutdown(self._lp, self.id), "ep_shutdown")

    def close(self) -> None:
        """Graceful close: flush the queue, send FIN, then ``on_close(LOCAL)``. Idempotent.

        From then on the handler gets nothing but that ``on_close`` (not even the rest of the
        data fetched in the current step)."""
        if self._lp is not None:
            code = _ep_close(self._lp, self._cid)
            if code and code != _ffi.EP_ECLOSING and code != _ffi.EP_ESTALE:
                raise _error(code, "ep_close")
            self._user_ended = True
            self._mute()

    def abort(self) -> None:
        """Reset now (RST), dropping the queue; ``on_close(ABORT)`` follows (or the peer's
        reason, if it left first). Idempotent; nothing but that ``on_close`` follows."""
        if self._lp is not None:
            code = _ep_abort(self._lp, self._cid)
            if code and code != _ffi.EP_ECLOSING and code != _ffi.EP_ESTALE:
                raise _error(code, "ep_abort")
            self._user_ended = True
            self._mute()

    def pause_reading(self) -> None:
        """Stop delivering ``on_data`` (the kernel buffers, then the peer is throttled) — at
        once: data of the current step not delivered yet is kept for ``resume_reading()``."""
        code = _ep_pause(self._lp, self._cid)
        if code:
            self._lenient(code, "ep_pause_reading")
        if not self._paused and not self._muted:
            self._paused = True
            if self._held is None:
                self._held = deque()
            self._on_data = self._hold
            if self._half_close:
                self._on_eof = self._hold_eof

    def resume_reading(self) -> None:
        """Deliver ``on_data`` again after ``pause_reading()``: first what was held, in order
        (at the end of the current step, or of the next one when called outside a handler)."""
        code = _ep_resume(self._lp, self._cid)
        if code:
            self._lenient(code, "ep_resume_reading")
        if self._paused:
            self._paused = False
            if self._held:
                self.loop._resumed.append(self)
            else:
                self._held = None
                self._deliver_to_handler()

    def set_keepalive(self, idle: int, interval: int, count: int) -> None:
        """TCP keepalive: probe after ``idle`` s of silence, every ``interval`` s, ``count``
        times; then the connection ends with ``on_close(ERROR, ETIMEDOUT)``. ``idle`` 0: off."""
        self._lenient(
            lib.ep_set_keepalive(self._lp, self.id, idle, interval, count), "ep_set_keepalive"
        )

    def set_user_timeout(self, seconds: float) -> None:
        """TCP_USER_TIMEOUT: sent data unacknowledged for ``seconds`` fails the connection."""
        self._lenient(
            lib.ep_set_user_timeout(self._lp, self.id, _ms(seconds)), "ep_set_user_timeout"
        )

    @property
    def peername(self) -> Any:
        """The peer's address, as ``socket.getpeername()`` gives it (cached).

        A peer that already reset cannot be asked any more (ENOTCONN): that is its departure,
        reported by ``on_close``, so this gives the family's unspecified address instead of
        raising (``("0.0.0.0", 0)``, ``("::", 0, 0, 0)``, or ``""`` for a Unix socket)."""
        if self._peername is None:
            self._peername = _with_socket(self.fileno(), _peer_address)
        return self._peername

    def _ended(self) -> None:
        super()._ended()
        # Break the connection <-> handler cycle (as asyncio's transports drop their protocol):
        # both are freed as soon as nobody else holds them, not by the garbage collector.
        self.handler = None
        self._on_data = self._on_eof = _ignore
        self._held = None

    def __repr__(self) -> str:
        return f"<eploop.Connection id={self.id}{' closed' if self.closed else ''}>"


class Timer:
    """A pending ``Loop.call_later`` callback; ``cancel()`` it if it is no longer wanted."""

    __slots__ = ("callback", "id", "loop", "repeat")

    def __init__(
        self, loop: Loop, timer_id: int, callback: Callable[[], object], repeat: float | None
    ) -> None:
        self.loop = loop
        self.id = timer_id
        self.callback = callback
        self.repeat = repeat

    @property
    def active(self) -> bool:
        """True until a one-shot timer fired, or the timer was cancelled."""
        return self.id in self.loop._timers

    def cancel(self) -> None:
        """The callback will not run again. Idempotent."""
        if self.active and self.loop._lp is not None:
            lib.ep_timer_cancel(self.loop._lp, self.id)
        self._finished()

    def _finished(self) -> None:
        self.loop._timers.pop(self.id, None)

    def __repr__(self) -> str:
        return f"<eploop.Timer id={self.id}{'' if self.active else ' done'}>"


@dataclasses.dataclass(frozen=True)
class Stats:
    """A loop's counters (``Loop.stats()``)."""

    open: int  #: registrations open now (listeners, connections, other fds)
    lingering: int  #: sockets still draining after a graceful close
    timers: int  #: timers pending
    accepted: int  #: connections accepted since the loop was created
    accept_overloads: int  #: accepts refused or paused because fds or memory ran out
    stale_events: int  #: events dropped because their registration had just ended
    bytes_in: int  #: bytes delivered through on_data
    bytes_out: int  #: bytes handed to the kernel
    closes: dict[CloseReason, int]  #: on_close calls so far, by reason


# ---------------------------------------------------------------------------------------------
# Events: how C reaches the handlers.
#
# Every registration is made with EP_QUEUE: during a loop step the library records its events
# (accept, data, writable, close) instead of calling back, and ep_poll() hands the whole step
# over at once, as an array of ep_event and one buffer holding all the data. One C call per step
# instead of one ctypes callback per event; the handlers then run here, in Python, in the order
# callbacks would have run. Both arrays belong to the loop and keep their address from step to
# step (they are cleared, not freed), so the memoryviews over them are rebuilt only when the
# library had to grow one.

_RESULT = struct.Struct("@PNPNi")  # struct ep_poll_result: events, count, data, data_len, state
assert _RESULT.size <= ctypes.sizeof(_ffi.PollResult)
# struct ep_event without its reserved and user fields: kind, reason, err, id, listener,
# offset, len
_EVENT = struct.Struct("@IIi4xQQQQ8x")
_EVENT_SIZE = _EVENT.size
_iter_events = _EVENT.iter_unpack
_unpack_event = _EVENT.unpack_from
assert ctypes.sizeof(_ffi.Event) == _EVENT_SIZE
_ACCEPT, _DATA, _WRITABLE, _CLOSE = (
    _ffi.EP_EVENT_ACCEPT,
    _ffi.EP_EVENT_DATA,
    _ffi.EP_EVENT_WRITABLE,
    _ffi.EP_EVENT_CLOSE,
)
_EINTR = -errno.EINTR
_STEP_COPY_MAX = 1 << 20
_MORE = _ffi.EP_RUN_MORE
_EMPTY = _ffi.EP_RUN_EMPTY


def _view(address: int, size: int) -> memoryview:
    """A byte view of ``size`` bytes of C memory at ``address`` (no copy)."""
    return memoryview((c_char * size).from_address(address)).cast("B")


def _closed(registration: _Registration, reason: int, err: int) -> None:
    """A registration's one on_close (its exception goes to the exception handler)."""
    handler = registration.handler if type(registration) is Connection else None
    try:
        on_close = getattr(handler, "on_close", None)
        if on_close is not None:
            on_close(_REASONS.get(reason, reason), err)
    except BaseException as exc:
        registration._ended()
        registration.loop._handler_failed(registration, exc, "on_close", handler)
    else:
        registration._ended()


# Timers and calls from other threads still come as callbacks (they carry no data), through two
# CFUNCTYPE objects created once, at import, and kept at module level so they are never freed.
# Their ``user`` pointer is not a pointer but an integer key: nothing C holds refers to a
# Python object.

_loops: dict[int, weakref.ReferenceType[Loop]] = {}
_loop_keys = itertools.count(1)


def _find(user: int | None) -> Loop | None:
    ref = _loops.get(user)  # type: ignore[arg-type]
    return ref() if ref is not None else None


def _on_timer(_lp: int, timer_id: int, user: int) -> None:
    timer = None
    try:
        loop = _find(user)
        timer = loop._timers.get(timer_id) if loop is not None else None
        if timer is None:
            return
        if not timer.repeat:
            timer._finished()
        timer.callback()
    except BaseException as exc:
        _failed(user, exc, "timer callback", timer.callback if timer is not None else None)


_posts: dict[int, tuple[int, Callable[[], object]]] = {}  # post key -> (loop key, callback)
_post_keys = itertools.count(1)


def _on_post(_lp: int, post_key: int) -> None:
    loop_key = 0
    callback = None
    try:
        loop_key, callback = _posts.pop(post_key)
        callback()
    except BaseException as exc:
        _failed(loop_key, exc, "call_soon_threadsafe callback", callback)


def _failed(user: int, exc: BaseException, where: str, callback: Any) -> None:
    """A callback raised inside C: keep it for the step to hand to the exception handler once
    ep_poll has returned (no user code runs inside a ctypes callback but the callback itself)."""
    loop = _find(user)
    if loop is not None:  # (None: the loop is being garbage-collected; nobody is left to tell)
        loop._callback_failures.append((exc, where, callback))


_TIMER_TRAMPOLINE = _ffi.TIMER_CB(_on_timer)
_POST_TRAMPOLINE = _ffi.POST_CB(_on_post)

# ---------------------------------------------------------------------------------------------
# The loop

_WAKE_POLL_MS = 100  # bound on signal latency when no wakeup fd can be armed
_SIGNALS = tuple(signal.valid_signals())


class Loop:
    """An epoll event loop; a context manager that closes every connection on exit.

    A loop is used by one thread at a time, normally the one that runs it. Only ``stop()`` and
    ``call_soon_threadsafe()`` may be called from other threads (``stop()`` also from a signal
    handler); any other call made while another thread is using the loop raises
    ``WrongThreadError`` (a ``RuntimeError``). ``Listener.port`` is read at listen time and may
    be read from anywhere.
    """

    def __init__(self, *, linger: float | None = None) -> None:
        address = lib.ep_loop_new()
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
        # ep_poll's output, read with one unpack per step
        self._result = _ffi.PollResult()
        self._result_ref = byref(self._result)
        self._result_view = memoryview(self._result).cast("B")
        self._events_at = self._events_size = 0
        self._events_view = memoryview(b"")
        self._data_at = self._data_size = 0
        self._data_view = memoryview(b"")
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
            self._running = True
            try:
                self._settle(lp)
            except ForkedLoopError:
                pass  # a child's copy of the loop: ep_loop_free alone is allowed, and enough
            except BaseException as exc:
                self._fatal(exc)
            finally:
                self._running = False
                lib.ep_loop_free(lp)  # EP_QUEUE registrations: nothing is called back
                self._lp = None
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

    def _settle(self, lp: Any) -> None:
        """Deliver what is already decided (a close() with nothing left to flush, data that
        arrived) before the loop is freed: a few steps without waiting, until one is quiet."""
        for _ in range(3):
            self._step(lp, 0)
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
        handler_factory: Callable[[], Any],
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
        handler: Any,
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
        return conn

    def register(
        self,
        sock_or_fd: Any,
        handler: Any,
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
        handler: Any,
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
            registration = Listener(self, code, handler, half_close, borrowed)
        else:
            registration = Connection(self, code, borrowed)
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
        return timer

    def call_soon_threadsafe(self, callback: Callable[[], object]) -> None:
        """Run ``callback()`` on the loop's thread at its next step (from any thread)."""
        key = next(_post_keys)
        _posts[key] = (self._key, callback)
        with self._lock:
            code = (
                lib.ep_post(self._lp, _POST_TRAMPOLINE, key)
                if self._lp is not None
                else _ffi.EP_ENULL
            )
        if code < 0:
            del _posts[key]
            if self._lp is None:
                raise ValueError("the loop is closed")
            raise _error(code, "ep_post")

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

    def stats(self) -> Stats:
        """The loop's counters."""
        raw = _ffi.Stats()
        code = lib.ep_get_stats(self._open_lp(), byref(raw), ctypes.sizeof(raw))
        if code < 0:
            raise _error(code, "ep_get_stats")
        return Stats(
            open=raw.open,
            lingering=raw.lingering,
            timers=raw.timers,
            accepted=raw.accepted,
            accept_overloads=raw.accept_overloads,
            stale_events=raw.stale_events,
            bytes_in=raw.bytes_in,
            bytes_out=raw.bytes_out,
            closes={reason: raw.closes[reason.value] for reason in CloseReason},
        )

    # -- exceptions in handlers

    def set_exception_handler(
        self, handler: Callable[[Loop, dict[str, Any]], object] | None
    ) -> None:
        """Route exceptions raised by handlers and callbacks to ``handler(loop, context)``
        (None: back to ``default_exception_handler``), as asyncio does.

        ``context`` holds ``"message"`` (text naming what failed), ``"exception"``,
        ``"connection"`` (the ``Connection`` whose handler raised, already aborted, or None for a
        timer or ``call_soon_threadsafe`` callback) and ``"handler"`` (the handler object, the
        handler factory, or the callback). It runs on the loop's thread, between events. If it
        raises, ``run()``/``run_once()``/``close()`` raise that exception once the step's other
        events are delivered: ``set_exception_handler(eploop.reraise)`` stops the loop at the
        first error (the connection is still aborted; the loop can be run again).
        """
        if handler is not None and not callable(handler):
            raise TypeError(f"an exception handler must be callable or None, not {handler!r}")
        self._exception_handler = handler

    def get_exception_handler(self) -> Callable[[Loop, dict[str, Any]], object] | None:
        """The handler set by ``set_exception_handler`` (None: the default)."""
        return self._exception_handler

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        """Log ``context["message"]`` with the exception's traceback through
        ``logging.getLogger("eploop")`` at ERROR level; the loop keeps serving."""
        exception = context.get("exception")
        exc_info = (
            (type(exception), exception, exception.__traceback__)
            if isinstance(exception, BaseException)
            else None
        )
        logger.error("%s", context.get("message", "eploop: unhandled exception"), exc_info=exc_info)

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        """Hand ``context`` to the exception handler, as the loop does for a failing handler."""
        handler = self._exception_handler
        try:
            if handler is None:
                self.default_exception_handler(context)
            else:
                handler(self, context)
        except BaseException as exc:
            self._fatal(exc)

    def _handler_failed(
        self,
        registration: _Registration | None,
        exc: BaseException,
        where: str,
        handler: Any = None,
    ) -> None:
        """A handler raised: abort its connection (nothing more but its on_close reaches it),
        then tell the exception handler, or end run() for a non-Exception (KeyboardInterrupt)."""
        if registration is not None:
            if handler is None:
                handler = getattr(registration, "handler", None)
            if type(registration) is Connection and not registration.closed:
                registration._mute()
                _ep_abort(registration._lp, registration._cid)  # its on_close follows
        if not isinstance(exc, Exception):
            self._fatal(exc)
            return
        subject = f" of {registration!r}" if registration is not None else ""
        if where.startswith("on_"):
            name = f"{type(handler).__qualname__}.{where}"
        else:
            name = f"{where} {handler!r}"
        self.call_exception_handler(
            {
                "message": f"eploop: exception in {name}{subject}",
                "exception": exc,
                "connection": registration if type(registration) is Connection else None,
                "handler": handler,
            }
        )

    def _fatal(self, exc: BaseException) -> None:
        """Keep ``exc`` for run() to raise at the end of the step (the first one wins; later
        ones become notes where Python has them, 3.11+)."""
        if self._error is None:
            self._error = exc
        elif self._error is not exc and hasattr(self._error, "add_note"):
            self._error.add_note(f"eploop: also raised in the same step: {exc!r}")

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
        lp = self._open_lp()
        self._enter()
        guard = self._guard = _SignalGuard(self, wake=True)
        timeout_ms = guard.timeout_ms
        step = self._step
        try:
            while True:
                if guard.pending:  # (also one that came before the wakeup fd was set)
                    guard.deliver()
                state = step(lp, timeout_ms)
                if state != _MORE:
                    break
            if guard.pending:
                guard.deliver()
        finally:
            self._guard = None
            guard.restore()
            self._running = False
        return RunResult(state)

    def run_once(self, timeout: float | None = None) -> RunResult:
        """Wait up to ``timeout`` seconds (None: until something happens) and dispatch.

        Returns ``MORE``, ``STOPPED`` or ``EMPTY`` (the loop had nothing to do; a step whose
        handlers ran returns ``MORE``: they may have made work). Raises like ``run()``. A signal
        that interrupts the wait returns ``RunResult.MORE`` after Python has run its handler.
        """
        lp = self._open_lp()
        self._enter()
        guard = self._guard = _SignalGuard(self, wake=False)
        try:
            state = self._step(lp, -1 if timeout is None else _ms(timeout))
            guard.deliver()
        finally:
            self._guard = None
            guard.restore()
            self._running = False
        return RunResult(state)

    def _step(self, lp: Any, timeout_ms: int) -> int:
        """One ep_poll() step and its handlers.

        Returns EP_RUN_MORE, _EMPTY or _STOPPED (MORE after a signal interrupted the wait, and
        instead of EMPTY when handlers ran: ep_poll's state predates them). Raises what the
        exception handler raised. The hot path of the binding: kept to few bytecodes.
        """
        if self._resumed:  # (resume_reading() called outside a step)
            self._deliver_resumed()
            timeout_ms = 0
        code = _ep_poll(lp, timeout_ms, None, self._result_ref)
        events, count, data, data_len, state = _RESULT.unpack_from(self._result_view)
        if code:
            if code != _EINTR:
                raise _error(code, "ep_poll")
            state = _MORE
        if self._callback_failures:
            self._timer_failures()
            state = _MORE if state == _EMPTY else state
        if count:
            if state == _EMPTY:
                state = _MORE
            size = count * _EVENT_SIZE
            if events != self._events_at or size > self._events_size:
                self._events_view = _view(events, size)
                self._events_at, self._events_size = events, size
            if data_len:
                if data != self._data_at or data_len > self._data_size:
                    self._data_view = _view(data, data_len)
                    self._data_at, self._data_size = data, data_len
                # One copy of the step's data, each event's bytes sliced from it (cheaper per
                # event than a memoryview slice and its copy), unless it is large: then only
                # the events' own copies, so a flood does not hold the bytes twice.
                step_data: Any = self._data_view
                if data_len <= _STEP_COPY_MAX:
                    if data_len < self._data_size:
                        step_data = step_data[:data_len]
                    step_data = step_data.tobytes()
            registrations = self._registrations
            if count == 1:
                records: Any = (_unpack_event(self._events_view),)
            else:
                records = _iter_events(self._events_view[:size])
            for kind, reason, err, reg_id, listener_id, offset, length in records:
                conn: Any = registrations.get(reg_id)
                try:
                    if kind == _DATA:
                        # (a muted or paused connection's _on_data/_on_eof skip or hold it)
                        if conn is None:
                            continue  # the loop's own wakeup pipe
                        if not length:
                            conn._on_eof()
                        elif length == data_len and data_len <= _STEP_COPY_MAX:
                            conn._on_data(step_data)  # (the step's only data: no slicing)
                        else:
                            chunk = step_data[offset : offset + length]
                            conn._on_data(chunk if type(chunk) is bytes else chunk.tobytes())
                    elif kind == _WRITABLE:
                        if conn is not None and not conn._muted:
                            on_writable = getattr(conn.handler, "on_writable", None)
                            if on_writable is not None:
                                on_writable()
                    elif kind == _ACCEPT:
                        if conn is None:  # outbound connections (listener 0) exist already
                            conn = Connection(self, reg_id)
                            registrations[reg_id] = conn
                            listener: Any = registrations[listener_id]
                            conn._attach(listener.factory(), listener.half_close)
                        if not conn._muted:  # (a connect() closed before it was up)
                            on_accept = getattr(conn.handler, "on_accept", None)
                            if on_accept is not None:
                                on_accept()
                    elif kind == _CLOSE:  # (_closed hands on_close's exception on itself)
                        if conn is not None:
                            if type(conn) is Connection and conn._held:
                                conn._deliver_held(forced=True)  # its data comes before its end
                            del registrations[reg_id]
                            _closed(conn, reason, err)
                        elif reg_id == self._wake_id:  # ep_drain closes it in the end:
                            self._wake_id = 0  # watch the pipe again (it keeps nothing alive)
                            if self._waking:
                                self._wake_fd()
                except BaseException as exc:
                    self._event_failed(conn, kind, length, exc, registrations.get(listener_id))
        if self._resumed:
            self._deliver_resumed()
            state = _MORE if state == _EMPTY else state
        if self._error is not None:
            self._raise_pending()
        return state  # type: ignore[no-any-return]

    def _event_failed(
        self, conn: Any, kind: int, length: int, exc: BaseException, listener: Any
    ) -> None:
        """Name the handler method that raised for the exception handler."""
        if kind == _DATA:
            where = "on_data" if length else "on_eof"
        elif kind == _WRITABLE:
            where = "on_writable"
        elif conn is not None and conn.handler is None:  # the factory raised
            self._handler_failed(conn, exc, "handler factory", getattr(listener, "factory", None))
            return
        else:
            where = "on_accept"
        self._handler_failed(conn, exc, where)

    def _deliver_resumed(self) -> None:
        """Hand their held data to the connections resumed since (see resume_reading)."""
        while self._resumed:
            resumed, self._resumed = self._resumed, []
            for conn in resumed:
                if not conn.closed:
                    conn._deliver_held(forced=False)

    def _timer_failures(self) -> None:
        failures, self._callback_failures = self._callback_failures, []
        for exc, where, callback in failures:
            self._handler_failed(None, exc, where, callback)

    def stop(self) -> None:
        """Make ``run()`` return after the current step (a request made while the loop is not
        running stops the next ``run()``). Any thread; safe in signal handlers."""
        with self._lock:
            if self._lp is not None:
                lib.ep_stop(self._lp)

    def _enter(self) -> None:
        if self._running:
            raise _error(_ffi.EP_EBUSY, "run")
        self._running = True

    def _raise_pending(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    # -- the wakeup pipe of run()

    def _wake_fd(self) -> int:
        """The write end of the loop's wakeup pipe, registered (EP_UNREF) on first use; -1 if
        it cannot be had."""
        if self._wake_pipe is None:
            self._wake_pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        if not self._wake_id:
            flags = _ffi.EP_BORROW | _ffi.EP_QUEUE | _ffi.EP_UNREF
            code = lib.ep_register(self._lp, self._wake_pipe[0], flags, None, self._key)
            if code < 0:
                return -1
            self._wake_id = code
        return self._wake_pipe[1]

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self._registrations)} registrations"
        return f"<eploop.Loop {state}>"


def _is_listening(fd: int) -> bool:
    try:
        return bool(
            _with_socket(fd, lambda s: s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        )
    except OSError:  # not a socket: a pipe, a tty, an eventfd...
        return False


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
        self.timeout_ms = -1
        if threading.current_thread() is not threading.main_thread():
            return  # Python runs signal handlers in the main thread only
        for signum in _SIGNALS:
            handler = _signal.getsignal(signum)  # (signal.getsignal adds an enum conversion)
            if callable(handler):
                self.handlers[signum] = handler
                signal.signal(signum, self._defer)
        if wake and self.handlers:
            write_fd = loop._wake_fd()
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
