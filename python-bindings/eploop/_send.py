"""Sends beyond ``Connection.send``: several buffers at once, a buffer without copying it, and
a file with sendfile(2). The ``Connection`` methods ``send_many``, ``send_nocopy`` and
``send_file`` call these.

Like ``send()``, each returns True while the send queue is at or below its high-water mark and
False once it is above it, or once the peer is gone (the data is then dropped; ``on_close``
reports the departure): never an exception because of the peer. A mistake of the caller (a
closed connection, a bad file) raises ``EploopError``, an ``OSError`` carrying the errno.

No-copy buffers: the library keeps a pointer into the object and calls back once it no longer
needs it; until then the object is pinned here (a buffer export held in ``_pinned``, keyed by an
integer that is the callback's ``user``: nothing C holds is ever garbage-collected).
"""

from __future__ import annotations

import ctypes
import itertools
from _thread import get_ident as _get_ident
from collections.abc import Iterable
from ctypes import byref
from os import writev as _writev
from typing import TYPE_CHECKING, Any

from . import _ffi, _pybuffer
from ._ffi import lib

if TYPE_CHECKING:
    from ._loop import Connection


# send_many's direct writev takes at most this many buffers (IOV_MAX is 1024).
_DIRECT_MAX = 64
# What a direct write leaves of a bytes object, from this size on, is handed to the library
# without a copy (as uvloop keeps the object): a slice and the library's queue would copy it twice.
_REST_NOCOPY = 64 * 1024

# Buffers the library holds without a copy, by release key.
_pinned: dict[int, _pybuffer.PyBuffer] = {}
_keys = itertools.count(1)


def _export(data: Any) -> _pybuffer.PyBuffer:
    """A held export of ``data``'s contiguous bytes (a bytearray cannot be resized meanwhile)."""
    buffer = _pybuffer.PyBuffer()
    _pybuffer.get_buffer(data, byref(buffer), _pybuffer.PyBUF_SIMPLE)
    return buffer


# Release callbacks received (each buffer's exactly once): for tests and monitoring.
release_calls = 0


def _release(user: int | None) -> None:
    global release_calls
    release_calls += 1
    buffer = _pinned.pop(user or 0, None)
    if buffer is not None:
        _pybuffer.release_buffer(byref(buffer))


# Created once, at import, and kept at module level: C may call it until the loop is freed.
_on_release = _ffi.RELEASE_CB(_release)


def pinned_count() -> int:
    """How many no-copy buffers the library still holds (for tests and monitoring)."""
    return len(_pinned)


def _result(conn: Connection, code: int, function: str) -> bool:
    """send()'s rule for every variant: True, False ("stop producing", or the peer is gone and
    the bytes were discarded), or an exception for the caller's own mistake only."""
    conn._went_slow()
    if code == 0:
        return True
    if code == 1 or conn._ended_by_loop(code):
        return False
    conn._check(code, function)
    return False


def send_many(conn: Connection, buffers: Iterable[Any]) -> bool:
    """Send ``buffers`` (bytes-like objects) in order as one unit, like ``writelines``: one
    ``writev`` when nothing is queued; what the kernel did not take is copied, except the rest of
    a large ``bytes`` object, which is held until sent (as ``send`` does)."""
    items = buffers if type(buffers) is list or type(buffers) is tuple else list(buffers)
    # The fast path of send(), for several bytes objects: one writev(2) of our own.
    if conn._wfd >= 0 and 0 < len(items) <= _DIRECT_MAX and all(type(b) is bytes for b in items):
        loop = conn.loop
        if loop._direct == _get_ident():
            try:
                written = _writev(conn._wfd, items)
            except OSError:
                written = 0
            loop._direct_out += written
            for i, b in enumerate(items):
                if written < len(b):
                    return _send_rest(conn, items[i:], written)
                written -= len(b)
            return True
        if loop._direct:  # another thread, while the loop's handlers run (see send)
            conn._wrong_thread()
    return _send_copies(conn, items)


def _send_rest(conn: Connection, items: Any, start: int) -> bool:
    """What a direct writev left of ``items`` (bytes objects; the first from byte ``start``),
    through the library in order: a large rest of the first without a copy."""
    first = items[0]
    if len(first) - start < _REST_NOCOPY:
        return _send_copies(conn, [memoryview(first)[start:], *items[1:]])
    keep_going = send_nocopy(conn, first, start)
    if len(items) > 1:
        keep_going = _send_copies(conn, items[1:]) and keep_going
    return keep_going


def _send_copies(conn: Connection, buffers: Iterable[Any]) -> bool:
    """send_many through ep_sendv, which copies what the kernel does not take."""
    exports: list[_pybuffer.PyBuffer] = []
    try:
        for b in buffers:
            exports.append(_export(b))
        sizes = [e.len for e in exports]
        keep_going = True
        # EP_IOV_MAX buffers per call; nothing else can be sent in between, so order holds.
        for start in range(0, max(len(exports), 1), _ffi.EP_IOV_MAX):
            chunk = exports[start : start + _ffi.EP_IOV_MAX]
            iov = (_ffi.IOVec * max(len(chunk), 1))()
            for i, e in enumerate(chunk):
                iov[i].iov_base = e.buf
                iov[i].iov_len = sizes[start + i]
            code = lib.ep_sendv(conn._lp, conn.id, iov, len(chunk))
            keep_going = _result(conn, code, "ep_sendv") and keep_going
        return keep_going
    finally:
        for e in exports:
            _pybuffer.release_buffer(byref(e))


def send_nocopy(conn: Connection, data: Any, start: int = 0) -> bool:
    """Send ``data`` (from byte ``start`` on) without copying it: the object is referenced until
    the kernel took every byte (or the connection ended). Do not modify it meanwhile."""
    buffer = _export(data)
    key = next(_keys)
    _pinned[key] = buffer
    code = lib.ep_send_nocopy(
        conn._lp, conn.id, (buffer.buf or 0) + start, buffer.len - start, _on_release, key
    )
    if code < 0:
        # Refused: the library will not call back; the export is ours to drop.
        _pybuffer.release_buffer(byref(_pinned.pop(key)))
    return _result(conn, code, "ep_send_nocopy")


def send_file(conn: Connection, file: Any, offset: int = 0, count: int | None = None) -> bool:
    """Send ``count`` bytes (None: to the end) of ``file`` (a file object or fd) from
    ``offset``, with sendfile(2), in order with what was sent before and after. The file stays
    yours: the library sends from its own duplicate, so it may be closed at once. A file that
    turns out shorter than the range ends the connection with ``on_close(ERROR, ENODATA)``."""
    fd = file if isinstance(file, int) else file.fileno()
    if offset < 0 or (count is not None and count < 0):
        raise ValueError("offset and count must be >= 0")
    if count == 0:
        return conn.send(b"")
    code = lib.ep_send_file(conn._lp, conn.id, fd, offset, count or 0)
    return _result(conn, code, "ep_send_file")


__all__ = ["pinned_count", "send_file", "send_many", "send_nocopy"]

