"""Registrations: what listeners and connections share (``_Registration``), ``Listener`` and
``Timer``, and the helpers they use (ids as the hot calls take them, sockets over a borrowed fd).
``Connection`` is in ``_connection``."""

from __future__ import annotations

import ctypes
import errno
import math
import socket
from collections.abc import Callable
from ctypes import byref, c_char, c_uint64
from typing import TYPE_CHECKING, Any

from . import _ffi
from ._errors import _error
from ._ffi import hot, lib

if TYPE_CHECKING:
    from ._handler import HandlerFactory
    from ._loop import Loop

# The hot calls used here, without argtypes (see _ffi): the loop as Loop._lp, ids as _id_arg().
_ep_close = hot.ep_close
_ep_pause = hot.ep_pause_reading
_ep_resume = hot.ep_resume_reading
_ep_fd = hot.ep_fd


def _ignore(*_args: object) -> None:
    pass


def _ms(seconds: float) -> int:
    """Seconds to whole milliseconds, rounded up so a short wait never becomes a busy poll."""
    return max(0, math.ceil(seconds * 1000))


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
    """An ep_id as the hot calls (no argtypes) take it (``_Registration._cid`` makes one per
    call; a datagram endpoint keeps its own).

    A ``byref()`` whose pointer value is the id: ctypes passes it as it is, where a Python int
    above 32 bits is refused without argtypes; on LP64 (x86-64, aarch64) a pointer and a
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

    __slots__ = ("__weakref__", "_borrowed", "_fd", "_lp", "id", "loop")

    def __init__(self, loop: Loop, reg_id: int, borrowed: object = None) -> None:
        self.loop = loop
        self.id = reg_id
        self._lp: Any = loop._lp  # the loop pointer (see Loop); None once on_close ran
        self._borrowed = borrowed  # the caller's socket/file object, kept alive while registered
        self._fd = -1  # cached by fileno(): a registration's fd never changes

    @property
    def _cid(self) -> Any:
        """The id as the C functions without argtypes take it, made for each call: most
        connections never need it (a handler's sends are written directly), and an idle
        connection is 64 bytes smaller without it kept. (A datagram endpoint, whose every send
        takes it, keeps it.)"""
        return _id_arg(self.id)

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

    def _end_call(self, end: Callable[..., int], function: str) -> bool:
        """``end`` (ep_close or ep_abort) on this registration, where one already ending (by the
        caller, or in this step by the library) is not an error; False once on_close has run."""
        if self._lp is None:
            return False
        code = end(self._lp, self._cid)
        if code and code != _ffi.EP_ECLOSING and code != _ffi.EP_ESTALE:
            raise _error(code, function)
        return True

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
        if seconds:
            self._only_library_writes()

    def _only_library_writes(self) -> None:
        """Every send goes through the library from now on (its idle timer must see writes)."""

    def set_watermarks(self, low: int, high: int) -> None:
        """Flow-control thresholds in bytes (default 16 KiB / 64 KiB): ``send()`` returns False
        above ``high``; ``on_writable`` fires at ``low``. On a listener: for its connections."""
        self._lenient(lib.ep_set_watermarks(self._lp, self.id, low, high), "ep_set_watermarks")

    def _ended(self) -> None:
        self._lp = None
        self._borrowed = None


def _is_listening(fd: int) -> bool:
    try:
        return bool(
            _with_socket(fd, lambda s: s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        )
    except OSError:  # not a socket: a pipe, a tty, an eventfd...
        return False


class Listener(_Registration):
    """A listening socket; every connection it accepts gets a handler from ``factory()``."""

    __slots__ = ("_idle_timeout", "_port", "factory", "half_close")

    def __init__(
        self,
        loop: Loop,
        reg_id: int,
        factory: HandlerFactory,
        half_close: bool,
        borrowed: object = None,
    ) -> None:
        super().__init__(loop, reg_id, borrowed)
        self.factory = factory
        self.half_close = half_close
        self._idle_timeout = False  # its connections have one: they never write directly
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

    def _only_library_writes(self) -> None:
        self._idle_timeout = True

    def close(self) -> None:
        """Stop listening; connections already accepted are not affected. Idempotent."""
        self._end_call(_ep_close, "ep_close")

    def pause(self) -> None:
        """Stop accepting (connections wait in the kernel backlog)."""
        self._check(_ep_pause(self._lp, self._cid), "ep_pause_reading")

    def resume(self) -> None:
        """Accept again after ``pause()``."""
        self._check(_ep_resume(self._lp, self._cid), "ep_resume_reading")

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"port={self._port}" if self._port >= 0 else "open"
        return f"<eploop.Listener id={self.id} {state}>"


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

