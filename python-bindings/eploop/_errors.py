"""Errors and close reasons: ``CloseReason``, ``RunResult``, ``EploopError`` and its subclasses,
and the mapping from a C function's negative result to the exception raised for it."""

from __future__ import annotations

import enum
import errno
from typing import TYPE_CHECKING, Any

from . import _ffi

if TYPE_CHECKING:
    from ._loop import Loop


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


# An errno that Python maps to a built-in OSError subclass (as ``OSError(errno, ...)`` itself
# does) raises an EploopError that is also that subclass: ``except EploopError`` and, say,
# ``except ConnectionError`` or ``except FileNotFoundError`` both catch it.


class BlockingIOEploopError(EploopError, BlockingIOError):
    """EAGAIN, EALREADY, EINPROGRESS: an ``EploopError`` and a ``BlockingIOError``."""


class BrokenPipeEploopError(EploopError, BrokenPipeError):
    """EPIPE, ESHUTDOWN (e.g. ``send()`` after your own ``shutdown()``): a ``BrokenPipeError``."""


class ConnectionAbortedEploopError(EploopError, ConnectionAbortedError):
    """ECONNABORTED: an ``EploopError`` and a ``ConnectionAbortedError``."""


class ConnectionRefusedEploopError(EploopError, ConnectionRefusedError):
    """ECONNREFUSED: an ``EploopError`` and a ``ConnectionRefusedError``."""


class ConnectionResetEploopError(EploopError, ConnectionResetError):
    """ECONNRESET: an ``EploopError`` and a ``ConnectionResetError``."""


class FileExistsEploopError(EploopError, FileExistsError):
    """EEXIST: an ``EploopError`` and a ``FileExistsError``."""


class FileNotFoundEploopError(EploopError, FileNotFoundError):
    """ENOENT (e.g. a Unix socket path in a missing directory): a ``FileNotFoundError``."""


class InterruptedEploopError(EploopError, InterruptedError):
    """EINTR: an ``EploopError`` and an ``InterruptedError``."""


class PermissionEploopError(EploopError, PermissionError):
    """EACCES, EPERM (e.g. registering a regular file, which epoll refuses): a
    ``PermissionError``."""


class TimeoutEploopError(EploopError, TimeoutError):
    """ETIMEDOUT: an ``EploopError`` and a ``TimeoutError``."""


_BY_ERRNO: dict[int, type[EploopError]] = {
    errno.EAGAIN: BlockingIOEploopError,
    errno.EALREADY: BlockingIOEploopError,
    errno.EINPROGRESS: BlockingIOEploopError,
    errno.EPIPE: BrokenPipeEploopError,
    errno.ESHUTDOWN: BrokenPipeEploopError,
    errno.ECONNABORTED: ConnectionAbortedEploopError,
    errno.ECONNREFUSED: ConnectionRefusedEploopError,
    errno.ECONNRESET: ConnectionResetEploopError,
    errno.EEXIST: FileExistsEploopError,
    errno.ENOENT: FileNotFoundEploopError,
    errno.EINTR: InterruptedEploopError,
    errno.EACCES: PermissionEploopError,
    errno.EPERM: PermissionEploopError,
    errno.ETIMEDOUT: TimeoutEploopError,
}


def _error(code: int, function: str) -> EploopError:
    if code == _ffi.EP_ESTALE:
        return StaleError(code, function)
    if code == _ffi.EP_ECLOSING:
        return ClosingError(code, function)
    if code == _ffi.EP_ETHREAD:
        return WrongThreadError(code, function)
    if code == _ffi.EP_EFORK:
        return ForkedLoopError(code, function)
    return _BY_ERRNO.get(-code, EploopError)(code, function)


def reraise(loop: Loop, context: dict[str, Any]) -> None:
    """An exception handler that stops ``run()`` and makes it raise the handler's exception:
    ``loop.set_exception_handler(eploop.reraise)`` (for scripts and tests)."""
    raise context["exception"]

