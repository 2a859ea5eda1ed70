"""Handlers: what a handler is (the ``ConnectionHandler`` and ``HandlerFactory`` protocols,
for type checkers), the ``Handler`` base class, and what the loop does when one raises
(``_ExceptionHandling``, the exception-handler half of ``Loop``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

from ._connection import Connection
from ._ffi import hot

if TYPE_CHECKING:
    from ._errors import CloseReason
    from ._loop import Loop
    from ._registration import _Registration

logger = logging.getLogger("eploop")
_ep_abort = hot.ep_abort


class ConnectionHandler(Protocol):
    """What ``Loop.connect`` and ``Loop.register`` take as a connection's handler (and what a
    ``HandlerFactory`` returns), for type checkers: any object with an ``on_data`` method.

    Handlers are duck-typed: the loop calls each of these methods only if the handler has it
    (``Handler`` has them all, with defaults), so only ``on_data`` is required here:

    * ``on_data(data: bytes)``: bytes arrived (never empty).
    * ``on_accept()``: optional; the connection is up (accepted, or ``connect`` succeeded).
    * ``on_eof()``: optional; the peer sent FIN (with ``half_close=True`` only); default:
      ``conn.close()``.
    * ``on_writable()``: optional; the send queue drained after ``send()`` returned False.
    * ``on_close(reason: CloseReason, errno: int)``: optional; the connection ended, once.

    The loop sets the handler's ``conn`` attribute to its ``Connection`` before calling it.
    """

    def on_data(self, data: bytes, /) -> object:
        """Bytes arrived (never empty)."""


class HandlerFactory(Protocol):
    """What ``Loop.listen`` takes (and ``Loop.register`` for a listening socket): called with
    no argument once per accepted connection, it returns that connection's handler. A
    ``Handler`` subclass is one."""

    def __call__(self) -> ConnectionHandler:
        """A new handler for a connection just accepted."""


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



class _ExceptionHandling:
    """``Loop``'s exception handler API and its handling of a handler that raised (see the
    exception policy in the ``_loop`` module docstring)."""

    _exception_handler: Callable[[Loop, dict[str, Any]], object] | None
    _error: BaseException | None

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
                handler(cast("Loop", self), context)  # (the mixin is only Loop's)
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

