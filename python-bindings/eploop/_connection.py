"""``Connection``: one connected stream in a loop, its sends and its step semantics (data held
while paused, nothing but ``on_close`` once muted; see the ``_loop`` module docstring)."""

from __future__ import annotations

import ctypes
from _thread import get_ident as _get_ident
from collections import deque
from collections.abc import Callable
from ctypes import byref, c_char, c_size_t
from os import write as _write
from typing import TYPE_CHECKING, Any

from . import _ffi, _pybuffer, _send
from ._errors import _error
from ._ffi import hot, lib
from ._registration import _ignore, _ms, _peer_address, _Registration, _with_socket

if TYPE_CHECKING:
    from ._loop import Loop

# The hot calls used here, without argtypes (see _ffi): the loop as Loop._lp, ids as _id_arg().
_ep_send = hot.ep_send
_ep_close = hot.ep_close
_ep_abort = hot.ep_abort
_ep_pause = hot.ep_pause_reading
_ep_resume = hot.ep_resume_reading

_INT_MAX = 2**31 - 1  # a larger length must be passed as a c_size_t
_REST_NOCOPY = _send._REST_NOCOPY  # (a rest from this size on goes without a copy)


class _Ignore:
    """A data sink that drops the data."""

    __slots__ = ()

    def on_data(self, data: bytes) -> None:
        pass


_IGNORE = _Ignore()  # (a handler without on_data)
_MUTED = _Ignore()  # a muted connection's: what the step still holds for it is skipped


class _Held(deque[bytes]):
    """Data held while reading is paused (b"" is the peer's EOF); the data sink meanwhile."""

    __slots__ = ()
    on_data = deque.append


class _Rare:
    """A connection's seldom-needed state, made on first need: most connections never pause,
    never half-close, never ask for their peer's address (an idle one is smaller without it)."""

    __slots__ = ("half_close", "held", "paused", "peername", "user_ended")

    def __init__(self) -> None:
        self.half_close = False
        self.paused = False
        self.user_ended = False  # close() or abort() was called (not: a handler raised)
        self.held: _Held | None = None  # data held; b"" is the peer's EOF
        self.peername: Any = None


class Connection(_Registration):
    """One connected stream (or pipe/tty) in a loop.

    ``handler`` is its handler object (None once ``on_close`` has run); ``user`` is free for
    application state.
    """

    __slots__ = ("_rare", "_sink", "_wfd", "handler", "user")

    def __init__(self, loop: Loop, reg_id: int, borrowed: object = None) -> None:
        # (_Registration's fields set here directly: one connection is made per accept)
        self.loop = loop
        self.id = reg_id
        self._lp = loop._lp
        self._borrowed = borrowed
        self._fd = -1
        # Direct writes (see send): the fd while the library's queue is known to be empty; -1
        # while it may not be (a send went through the library); -2 never again (a registered
        # fd, an idle timeout, after close/abort/shutdown or a handler's raise, once ended).
        self._wfd = -1
        self.handler: Any = None
        self.user: Any = None
        # Where the step delivers data: ``_sink.on_data(data)``. Step semantics (see the module
        # docstring): the handler itself (no bound method is kept: an idle connection is
        # smaller, and the call costs the same); while paused, or until the held data is
        # delivered, the _Held deque, which keeps data and the peer's EOF; _MUTED once
        # close()/abort() was called or a handler raised; _IGNORE for a handler without on_data.
        self._sink: Any = _IGNORE
        self._rare: _Rare | None = None

    @property
    def _muted(self) -> bool:
        return self._sink is _MUTED

    def _rare_state(self) -> _Rare:
        rare = self._rare
        if rare is None:
            rare = self._rare = _Rare()
        return rare

    def _attach(self, handler: Any, half_close: bool) -> None:
        handler.conn = self
        self.handler = handler
        if half_close:
            self._rare_state().half_close = True
        self._deliver_to_handler()

    def _deliver_to_handler(self) -> None:
        handler = self.handler
        self._sink = handler if hasattr(handler, "on_data") else _IGNORE

    def _eof(self) -> None:
        """The peer's EOF (reported with half_close only): like data, held or skipped."""
        rare = self._rare
        if rare is not None and rare.half_close and self._sink is not _MUTED:
            if rare.held is not None:
                rare.held.append(b"")
            else:
                getattr(self.handler, "on_eof", self.close)()

    def _mute(self) -> None:
        """Nothing more but on_close: what the step still holds for it is skipped."""
        self._wfd = -2
        self._sink = _MUTED
        rare = self._rare
        if rare is not None:
            rare.paused = False
            rare.held = None

    def _holds_data(self) -> bool:
        rare = self._rare
        return rare is not None and bool(rare.held)

    def _deliver_held(self, forced: bool) -> None:
        """Deliver the held data, in order, while reading is not paused (``forced``: the
        connection is ending, so it all goes now, pause or not, before its on_close)."""
        rare = self._rare_state()
        held = rare.held
        while held and self._sink is not _MUTED and (forced or not rare.paused):
            data = held.popleft()
            try:
                if data:
                    getattr(self.handler, "on_data", _ignore)(data)
                elif rare.half_close:
                    getattr(self.handler, "on_eof", self.close)()
            except BaseException as exc:
                self.loop._handler_failed(self, exc, "on_data" if data else "on_eof")
            held = rare.held
        if self._sink is not _MUTED and not rare.held and not rare.paused:
            rare.held = None
            self._deliver_to_handler()

    def _ended_by_loop(self, code: int) -> bool:
        return (
            (code == _ffi.EP_ESTALE or code == _ffi.EP_ECLOSING)
            and self._lp is not None
            and not (self._rare is not None and self._rare.user_ended)
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
        # The fast path, as uvloop writes: while the library's queue is empty (so order holds),
        # from the handlers of a step that allows it (see _events.step), one write(2) of our
        # own, and the library is not called at all. What the kernel did not take goes the
        # library's way, and so does a failed write: the library's own send then meets the same
        # peer (its departure is on_close, as ever) or a kernel that takes the bytes after all.
        if self._wfd >= 0 and type(data) is bytes:
            loop = self.loop
            if loop._direct == _get_ident():
                try:
                    written = _write(self._wfd, data)
                except OSError:
                    written = 0
                loop._direct_out += written
                if written == len(data):
                    return True
                if len(data) - written >= _REST_NOCOPY:  # (bytes cannot change meanwhile)
                    return _send.send_nocopy(self, data, written)
                data = data[written:]
            elif loop._direct:  # another thread, while the loop's handlers run (see _wrong_thread)
                self._wrong_thread()
        if type(data) is bytes:
            size = len(data)
            code = _ep_send(self._lp, self._cid, data, size if size <= _INT_MAX else c_size_t(size))
        else:
            code = self._send_buffer(data)
        # Its queue may hold bytes now (_went_slow, inline). After the call: until the rest of a
        # partial write is queued, another thread's send to this connection finds it direct,
        # and is refused, instead of overtaking the rest.
        if self._wfd >= 0:
            self._wfd = -1
        self.loop._slow_sent = True
        if code == 0:
            return True
        if code == 1 or self._ended_by_loop(code):
            return False
        return bool(self._check(code, "ep_send"))

    def _went_slow(self) -> None:
        """A send through the library: its queue may hold bytes now, so no direct write until
        an event says it is empty again."""
        if self._wfd >= 0:
            self._wfd = -1
        self.loop._slow_sent = True

    def _only_library_writes(self) -> None:
        self._wfd = -2

    def _wrong_thread(self) -> None:
        """A send from a thread other than the one running the loop's handlers (a mistake the
        library itself catches only while that thread is inside a call): refused, so that it
        cannot land in the middle of a write of the loop's thread."""
        raise _error(_ffi.EP_ETHREAD, "ep_send")

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
        buffer = _pybuffer.PyBuffer()
        _pybuffer.get_buffer(view, byref(buffer), 0)
        try:
            return _ep_send(self._lp, self._cid, ctypes.c_void_p(buffer.buf), length)  # type: ignore[no-any-return]
        finally:
            _pybuffer.release_buffer(byref(buffer))

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
        self._wfd = -2  # (a send after it is an error, which the library reports)
        self._lenient(lib.ep_shutdown(self._lp, self.id), "ep_shutdown")
        self.loop._kick()

    def close(self) -> None:
        """Graceful close: flush the queue, send FIN, then ``on_close(LOCAL)``. Idempotent.

        From then on the handler gets nothing but that ``on_close`` (not even the rest of the
        data fetched in the current step)."""
        self._end(_ep_close, "ep_close")

    def abort(self) -> None:
        """Reset now (RST), dropping the queue; ``on_close(ABORT)`` follows (or the peer's
        reason, if it left first). Idempotent; nothing but that ``on_close`` follows."""
        self._end(_ep_abort, "ep_abort")

    def _end(self, end: Callable[..., int], name: str) -> None:
        """``close``/``abort``: a connection already ending (by the caller or, in this step, by
        the library) is not an error; the handler is muted either way."""
        if self._end_call(end, name):
            self._rare_state().user_ended = True
            self._mute()
            self.loop._kick()

    def pause_reading(self) -> None:
        """Stop delivering ``on_data`` (the kernel buffers, then the peer is throttled) — at
        once: data of the current step not delivered yet is kept for ``resume_reading()``."""
        code = _ep_pause(self._lp, self._cid)
        if code:
            self._lenient(code, "ep_pause_reading")
        rare = self._rare_state()
        if not rare.paused and self._sink is not _MUTED:
            rare.paused = True
            if rare.held is None:
                rare.held = _Held()
            self._sink = rare.held

    def resume_reading(self) -> None:
        """Deliver ``on_data`` again after ``pause_reading()``: first what was held, in order
        (at the end of the current step, or of the next one when called outside a handler)."""
        code = _ep_resume(self._lp, self._cid)
        if code:
            self._lenient(code, "ep_resume_reading")
        rare = self._rare
        if rare is not None and rare.paused:
            rare.paused = False
            if rare.held:
                self.loop._resumed.append(self)
                self.loop._kick()
            else:
                rare.held = None
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
        rare = self._rare_state()
        if rare.peername is None:
            rare.peername = _with_socket(self.fileno(), _peer_address)
        return rare.peername

    def _ended(self) -> None:
        super()._ended()
        self._wfd = -2
        # Break the connection <-> handler cycle (as asyncio's transports drop their protocol):
        # both are freed as soon as nobody else holds them, not by the garbage collector.
        self.handler = None
        self._sink = _MUTED
        if self._rare is not None:
            self._rare.held = None

    def __repr__(self) -> str:
        return f"<eploop.Connection id={self.id}{' closed' if self.closed else ''}>"

