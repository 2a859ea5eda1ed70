"""EploopError is also the built-in OSError subclass Python itself picks for its errno
(``OSError(errno.ECONNRESET, ...)`` is a ``ConnectionResetError``), so ``except EploopError``
and ``except ConnectionError`` / ``FileNotFoundError`` / ``PermissionError`` both work, with
``errno``, ``strerror`` and ``code`` as before.

Which of them can actually be raised: only the caller's own mistakes and what a call finds out
at once. A peer never makes a call raise (refused, reset, timed out: those are ``on_close``),
so ECONNREFUSED, ECONNRESET and ETIMEDOUT are covered by the mapping test only; the calls below
raise for real: ``send()`` after your own ``shutdown()`` (ESHUTDOWN: BrokenPipeError),
``listen()`` on a Unix path whose directory does not exist (ENOENT: FileNotFoundError),
``register()`` of a regular file, which epoll refuses (EPERM: PermissionError).
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from pathlib import Path

import pytest

import eploop
from eploop import _errors, _ffi

MAPPED = {
    errno.EAGAIN: (BlockingIOError, eploop.BlockingIOEploopError),
    errno.EALREADY: (BlockingIOError, eploop.BlockingIOEploopError),
    errno.EINPROGRESS: (BlockingIOError, eploop.BlockingIOEploopError),
    errno.EPIPE: (BrokenPipeError, eploop.BrokenPipeEploopError),
    errno.ESHUTDOWN: (BrokenPipeError, eploop.BrokenPipeEploopError),
    errno.ECONNABORTED: (ConnectionAbortedError, eploop.ConnectionAbortedEploopError),
    errno.ECONNREFUSED: (ConnectionRefusedError, eploop.ConnectionRefusedEploopError),
    errno.ECONNRESET: (ConnectionResetError, eploop.ConnectionResetEploopError),
    errno.EEXIST: (FileExistsError, eploop.FileExistsEploopError),
    errno.ENOENT: (FileNotFoundError, eploop.FileNotFoundEploopError),
    errno.EINTR: (InterruptedError, eploop.InterruptedEploopError),
    errno.EACCES: (PermissionError, eploop.PermissionEploopError),
    errno.EPERM: (PermissionError, eploop.PermissionEploopError),
    errno.ETIMEDOUT: (TimeoutError, eploop.TimeoutEploopError),
}


@pytest.mark.parametrize("number", sorted(MAPPED), ids=errno.errorcode.get)
def test_an_errno_with_a_builtin_subclass_gets_an_eploop_error_that_is_it(number: int) -> None:
    builtin, eploop_class = MAPPED[number]
    assert type(OSError(number, "x")) is builtin  # the same choice Python makes
    error = _errors._error(-number, "ep_x")
    assert type(error) is eploop_class
    assert isinstance(error, eploop.EploopError) and isinstance(error, builtin)
    assert error.errno == number and error.code == -number and error.function == "ep_x"
    assert error.strerror == os.strerror(number)
    assert str(error) == f"[Errno {number}] ep_x: {os.strerror(number)}"
    assert error.args == (number, os.strerror(number))


def test_other_errnos_and_the_librarys_own_codes_keep_their_classes() -> None:
    error = _errors._error(-errno.EADDRINUSE, "listen")
    assert type(error) is eploop.EploopError and type(OSError(errno.EADDRINUSE, "x")) is OSError
    assert type(_errors._error(_ffi.EP_ESTALE, "ep_send")) is eploop.StaleError
    assert type(_errors._error(_ffi.EP_ECLOSING, "ep_send")) is eploop.ClosingError
    assert type(_errors._error(_ffi.EP_ETHREAD, "ep_send")) is eploop.WrongThreadError
    assert type(_errors._error(_ffi.EP_EFORK, "ep_send")) is eploop.ForkedLoopError
    for code in (_ffi.EP_ESTALE, _ffi.EP_ECLOSING, _ffi.EP_ETHREAD, _ffi.EP_EFORK, _ffi.EP_ENULL):
        assert not isinstance(_errors._error(code, "f"), ConnectionError)


def test_send_after_own_shutdown_is_a_broken_pipe_and_a_connection_error() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs, eploop.Loop() as loop:
        conn = loop.register(ours, eploop.Handler())
        conn.shutdown()
        with pytest.raises(ConnectionError) as caught:
            conn.send(b"x")
        assert isinstance(caught.value, BrokenPipeError)
        assert isinstance(caught.value, eploop.EploopError)
        assert caught.value.errno == errno.ESHUTDOWN and caught.value.function == "ep_send"
        with pytest.raises(eploop.EploopError):  # the old way to catch it still works
            conn.send(b"x")


def test_listen_on_a_unix_path_in_a_missing_directory_is_file_not_found(tmp_path: Path) -> None:
    path = str(tmp_path / "missing" / "server.sock")
    with eploop.Loop() as loop:
        with pytest.raises(FileNotFoundError) as caught:
            loop.listen(path, eploop.Handler)
        assert isinstance(caught.value, eploop.EploopError)
        assert caught.value.errno == errno.ENOENT
        assert caught.value.filename is None  # (no path attached: as before)


def test_registering_a_regular_file_is_a_permission_error() -> None:
    with tempfile.TemporaryFile() as file, eploop.Loop() as loop:
        with pytest.raises(PermissionError) as caught:
            loop.register(file, eploop.Handler())
        assert isinstance(caught.value, eploop.EploopError)
        assert caught.value.errno == errno.EPERM and caught.value.function == "ep_register"
        assert not loop.connections
