"""The step decoder and the trampolines: how C reaches the handlers.

``step`` (``Loop._step``) is one ``ep_poll()`` call and the dispatch of the events it returned;
``_on_timer`` and ``_on_post`` are the only ctypes callbacks. The functions taking ``self`` are
``Loop`` methods (``Loop`` binds them as class attributes), kept here beside the decoder.

How events reach Python: every registration is made with EP_QUEUE, so during a loop step the
library records events instead of calling back, and one ``ep_poll()`` call per step hands them
all over (an array of ``ep_event`` and one data buffer, read here through memoryviews). The
handlers then run in Python, in the order callbacks would have run. Only timers and
``call_soon_threadsafe`` callbacks come through ctypes callbacks: two ``CFUNCTYPE`` objects
created once, at import, kept at module level, whose ``user`` pointer is an integer key, so
nothing C can call or hold is ever garbage-collected.
"""

from __future__ import annotations

import errno
import itertools
import os
import signal
import sys
import threading
import weakref
from _thread import get_ident as _get_ident
from collections.abc import Callable
from ctypes import byref, c_char
from typing import TYPE_CHECKING, Any

from . import _ffi, _signals
from ._connection import _MUTED, Connection
from ._errors import _REASONS, _error
from ._ffi import hot, lib
from ._registration import _Registration

if TYPE_CHECKING:
    from ._loop import Loop

_ep_poll_with = hot.ep_poll_with

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

_RESULT = _ffi.POLL_RESULT_LAYOUT  # events, count, data, data_len, state
_sizes = _ffi.POLL_SIZES_LAYOUT.unpack_from  # count, data_len, state
_EVENT = _ffi.EVENT_LAYOUT  # kind, reason, err, queued, id, listener, offset, len
_EVENT_SIZE = _EVENT.size
_KIND_BYTE = 0 if sys.byteorder == "little" else 3  # (kinds are small: one byte says which)
_iter_events = _EVENT.iter_unpack
_unpack_event = _EVENT.unpack_from
_ACCEPT, _DATA, _WRITABLE, _CLOSE, _DATAGRAM, _DATAGRAM_ERROR = (
    _ffi.EP_EVENT_ACCEPT,
    _ffi.EP_EVENT_DATA,
    _ffi.EP_EVENT_WRITABLE,
    _ffi.EP_EVENT_CLOSE,
    _ffi.EP_EVENT_DATAGRAM,
    _ffi.EP_EVENT_DATAGRAM_ERROR,
)
_EINTR = -errno.EINTR
_STEP_COPY_MAX = 1 << 16
_MORE = _ffi.EP_RUN_MORE
_EMPTY = _ffi.EP_RUN_EMPTY


def _view(address: int, size: int) -> memoryview:
    """A byte view of ``size`` bytes of C memory at ``address`` (no copy)."""
    return memoryview((c_char * size).from_address(address)).cast("B")


def _map_result(self: Loop, size: int, data_len: int) -> None:
    """New views of the step's arrays once one outgrew its view (it may have moved: ep_poll's
    arrays keep their address from step to step until they grow)."""
    events, _count, data, _data_len, _state = _RESULT.unpack_from(self._result_view)
    if size > self._events_size:
        self._events_view = _view(events, size)
        self._events_size = size
    if data_len > self._data_size:
        self._data_view = _view(data, data_len)
        self._data_size = data_len


def direct_owner() -> int:
    """The thread whose handlers may write to sockets directly (Connection.send) while it runs
    the loop: the caller's, unless SIGPIPE would kill the process (a write(2) is not a
    send(MSG_NOSIGNAL); Python ignores SIGPIPE unless told otherwise). 0: none."""
    return 0 if signal.getsignal(signal.SIGPIPE) == signal.SIG_DFL else _get_ident()


class _Stepping:
    """The step's state on a ``Loop`` (a mixin, as ``_ExceptionHandling`` is): ep_poll_with's
    block and the views over its result, and the bookkeeping of direct writes."""

    _running: bool

    def _init_stepping(self, address: int) -> None:
        # ep_poll_with's arguments and result, kept from step to step (the timeout is written
        # only when it changes); the result read with one unpack per step
        self._call = _ffi.PollArgs(lp=address)
        self._call_ref = byref(self._call)
        self._call_timeout = 0
        self._result_view = memoryview(self._call).cast("B")[_ffi.PollArgs.result.offset :]
        self._events_size = 0
        self._events_view = memoryview(b"")
        self._data_size = 0
        self._data_view = memoryview(b"")
        # Direct writes (see Connection.send): the thread running the loop (direct_owner), the
        # one whose handlers may write to sockets directly in this step (0: none may), whether
        # a send went through the library since the step's ep_poll began, and the bytes written
        # directly (for stats()). With EPLOOP_TRACE (read by the library as the loop is made)
        # only the library writes, so that the trace shows every write.
        self._owner = 0
        self._direct = 0
        self._slow_sent = False
        self._direct_out = 0
        self._traced = os.environ.get("EPLOOP_TRACE", "") not in ("", "0")

    def _start_running(self) -> None:
        """This thread runs the loop's steps now (and writes directly from their handlers)."""
        self._running = True
        self._owner = 0 if self._traced else direct_owner()

    def _stopped_running(self) -> None:
        self._running = False
        self._direct = 0  # (no direct write outside the handlers of a step)


def _closing(registrations: dict[int, Any], records: Any) -> None:
    """No direct write, from any handler of this step, to a connection this batch closes: the
    library closed its descriptor during the step, and the number may already belong to a
    connection accepted in the same step. Every descriptor the library closes has its close
    in the batch of the step that closed it, so the others are safe."""
    for record in records:
        if record[0] == _CLOSE:
            conn = registrations.get(record[4])
            if type(conn) is Connection:
                conn._wfd = -2


def _closed(registration: _Registration, reason: int, err: int) -> None:
    """A registration's one on_close (its exception goes to the exception handler)."""
    handler = getattr(registration, "handler", None)  # (a listener has none)
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


# call_soon_threadsafe callbacks not run yet: loop key -> callbacks, in call order. The call that
# finds no batch posts one (ep_post with the loop key); the calls until the loop takes it only
# append (a burst is one ctypes call and one callback into Python, not one each). Kept here, not on
# the Loop: what was posted runs even if the Loop object is collected meanwhile.
_soon: dict[int, list[Callable[[], object]]] = {}
_soon_lock = threading.Lock()


def _forget_soon_in_child() -> None:
    """A forked child's loops are its parent's: their batches are not the child's to run or join
    (its calls raise ForkedLoopError, as every other call on an inherited loop)."""
    global _soon_lock
    _soon_lock = threading.Lock()  # (another thread may have held it at the fork)
    _soon.clear()


os.register_at_fork(after_in_child=_forget_soon_in_child)


def _join_batch(key: int, callback: Callable[[], object]) -> bool:
    """Adds ``callback`` to the loop's posted batch, if one is waiting (under _soon_lock)."""
    batch = _soon.get(key)
    if batch is not None:
        batch.append(callback)
    return batch is not None


def post_soon(self: Loop, callback: Callable[[], object]) -> None:
    """Loop.call_soon_threadsafe: joins the posted batch, or posts a new one."""
    key = self._key
    with _soon_lock:
        if _join_batch(key, callback):
            return
    with self._lock:  # (ordered against close(), and against the other threads' calls)
        if self._lp is None:
            raise ValueError("the loop is closed")
        with _soon_lock:  # (a batch exists only once posted: nobody joins one that failed)
            if _join_batch(key, callback):
                return
            code = lib.ep_post(self._lp, _POST_TRAMPOLINE, key)
            if code < 0:
                raise _error(code, "ep_post")
            _soon[key] = [callback]


def _on_post(_lp: int, loop_key: int) -> None:
    with _soon_lock:
        batch = _soon.pop(loop_key, ())
    for callback in batch:
        try:
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


def step(self: Loop, timeout_ms: int) -> int:
    """One ep_poll() step and its handlers.

    Returns EP_RUN_MORE, _EMPTY or _STOPPED (MORE after a signal interrupted the wait, and
    instead of EMPTY when handlers ran: ep_poll's state predates them). Raises what the
    exception handler raised. The hot path of the binding: kept to few bytecodes.
    """
    if self._resumed:  # (resume_reading() called outside a step)
        self._deliver_resumed()
        timeout_ms = 0
    # No direct write while C runs (a timer's send goes through the library); and whether a
    # send went through the library meanwhile: then this step's ``queued`` figures may be old,
    # and no connection goes back to direct writes on their word.
    self._direct = 0
    self._slow_sent = False
    if timeout_ms != self._call_timeout:
        self._call.timeout_ms = self._call_timeout = timeout_ms
    code = _ep_poll_with(self._call_ref)  # (one argument: ctypes converts each on each call)
    count, data_len, state = _sizes(self._result_view)
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
        if size > self._events_size or data_len > self._data_size:
            _map_result(self, size, data_len)  # (the arrays move only when they grow)
        if data_len:
            # A step of small messages: one copy of its data, each event's bytes sliced from
            # it (cheaper per event than a memoryview slice and its copy). Over 64 KiB: only
            # each event's own copy, so received bytes reach Python objects with one copy
            # (16 KiB echoes at 50 connections: 59,441 -> 42,831 instructions each; a step-wide
            # bytes object over 128 KiB is also an mmap and munmap per step).
            step_data: Any = self._data_view
            if data_len <= _STEP_COPY_MAX:
                if data_len < self._data_size:
                    step_data = step_data[:data_len]
                step_data = step_data.tobytes()
        registrations = self._registrations
        # Direct writes (Connection.send) are allowed in this step's handlers, on the thread
        # running them (``_owner``), except to the connections this batch closes (see _closing).
        if count == 1:
            record = _unpack_event(self._events_view)
            records: Any = (record,)
            if record[0] == _CLOSE:
                _closing(registrations, records)
        else:
            events = self._events_view[:size]
            # (one byte per event, searched by memchr: `in` on the strided view itself would
            # iterate it in Python objects, about 200 instructions per event)
            if _CLOSE in events[_KIND_BYTE::_EVENT_SIZE].tobytes():
                records = list(_iter_events(events))
                _closing(registrations, records)
            else:
                records = _iter_events(events)
        self._direct = self._owner
        # (``listener_id`` is, for a datagram, the length of its sender's address; ``err``, for
        # an accept, the connection's fd)
        for kind, reason, err, queued, reg_id, listener_id, offset, length in records:
            conn: Any = registrations.get(reg_id)
            try:
                if kind == _DATA:
                    # (a muted or paused connection's sink skips or holds it)
                    if conn is None:
                        continue  # the loop's own wakeup pipe
                    if conn._wfd == -1 and not queued and self._direct and not self._slow_sent:
                        conn._wfd = conn._fd  # its queue is empty (again): write directly
                    if not length:
                        conn._eof()
                    elif length == data_len and data_len <= _STEP_COPY_MAX:
                        conn._sink.on_data(step_data)  # (the step's only data: no slicing)
                    else:
                        chunk = step_data[offset : offset + length]
                        conn._sink.on_data(chunk if type(chunk) is bytes else chunk.tobytes())
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
                        if listener._idle_timeout:  # (only the library sees sends then)
                            conn._wfd = -2
                        conn._attach(listener.factory(), listener.half_close)
                    conn._fd = err
                    if conn._wfd == -1 and not queued and self._direct and not self._slow_sent:
                        conn._wfd = err
                    if conn._sink is not _MUTED:  # (a connect() closed before it was up)
                        on_accept = getattr(conn.handler, "on_accept", None)
                        if on_accept is not None:
                            on_accept()
                elif kind == _DATAGRAM:  # the sender's address follows the datagram
                    end = offset + length
                    raw = step_data[offset : end + listener_id]
                    if type(raw) is not bytes:
                        raw = raw.tobytes()
                    conn._on_datagram(raw[:length], raw[length:], reason)
                elif kind == _DATAGRAM_ERROR:
                    conn._on_error(err)
                elif kind == _CLOSE:  # (_closed hands on_close's exception on itself)
                    if conn is not None:
                        if type(conn) is Connection and conn._holds_data():
                            conn._deliver_held(forced=True)  # its data comes before its end
                        del registrations[reg_id]
                        _closed(conn, reason, err)
                    elif reg_id == self._wake_id:  # ep_drain closes it in the end:
                        self._wake_id = 0  # watch the pipe again (it keeps nothing alive)
                        if self._waking:
                            _signals.wake_fd(self)
            except BaseException as exc:
                self._event_failed(conn, kind, length, exc, registrations.get(listener_id))
    if self._resumed:
        self._deliver_resumed()
        state = _MORE if state == _EMPTY else state
    if self._error is not None:
        self._raise_pending()
    return state  # type: ignore[no-any-return]

def event_failed(
    self: Loop, conn: Any, kind: int, length: int, exc: BaseException, listener: Any
) -> None:
    """Name the handler method that raised for the exception handler."""
    if kind == _DATA:
        where = "on_data" if length else "on_eof"
    elif kind == _WRITABLE:
        where = "on_writable"
    elif kind == _DATAGRAM:
        where = "on_datagram"
    elif kind == _DATAGRAM_ERROR:
        where = "on_error"
    elif conn is not None and conn.handler is None:  # the factory raised
        self._handler_failed(conn, exc, "handler factory", getattr(listener, "factory", None))
        return
    else:
        where = "on_accept"
    self._handler_failed(conn, exc, where)


def deliver_resumed(self: Loop) -> None:
    """Hand their held data to the connections resumed since (see resume_reading)."""
    while self._resumed:
        resumed, self._resumed = self._resumed, []
        for conn in resumed:
            if not conn.closed:
                conn._deliver_held(forced=False)


def timer_failures(self: Loop) -> None:
    failures, self._callback_failures = self._callback_failures, []
    for exc, where, callback in failures:
        self._handler_failed(None, exc, where, callback)
