"""Shared helpers for the eploop binding tests: every socket op and subprocess has a timeout.

(Not named conftest: tests/ of the repository has conftest modules of its own.)
"""

from __future__ import annotations

import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import eploop

TIMEOUT = 10.0  # seconds: the bound on any single wait in these tests
BINDINGS = Path(__file__).resolve().parent.parent
EXAMPLES = BINDINGS / "examples"
REPO = BINDINGS.parent
# Subprocesses import the very eploop package this test run imported.
CHILD_ENV = {**os.environ, "PYTHONPATH": str(Path(eploop.__file__).resolve().parent.parent)}


class Events:
    """A thread-safe event list that tests can wait on."""

    def __init__(self) -> None:
        self.items: list[tuple[Any, ...]] = []
        self._cond = threading.Condition()

    def add(self, *item: Any) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        with self._cond:
            return [item for item in self.items if item[0] == kind]

    def wait(self, predicate: Callable[[Events], bool], timeout: float = TIMEOUT) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: predicate(self), timeout)
        assert ok, f"timed out after {timeout}s waiting; events so far: {self.items[:50]}"

    def wait_count(self, kind: str, count: int, timeout: float = TIMEOUT) -> None:
        self.wait(lambda e: len(e.of(kind)) >= count, timeout)


class Recorder(eploop.Handler):
    """Records every callback; echoes data back when ``echo`` is set."""

    def __init__(self, events: Events, echo: bool = False) -> None:
        self.events = events
        self.echo = echo
        self.received = bytearray()

    def on_accept(self) -> None:
        self.events.add("accept", self.conn.id)

    def on_data(self, data: bytes) -> None:
        self.received += data
        self.events.add("data", self.conn.id, data)
        if self.echo:
            self.conn.send(data)

    def on_eof(self) -> None:
        self.events.add("eof", self.conn.id)

    def on_writable(self) -> None:
        self.events.add("writable", self.conn.id)

    def on_close(self, reason: eploop.CloseReason, errno: int) -> None:
        self.events.add("close", self.conn.id, reason, errno)


class LoopThread:
    """Runs ``loop.run()`` in a thread; ``finish()`` stops it and (unless ``close=False``)
    closes the loop there."""

    def __init__(self, loop: eploop.Loop, close: bool = True) -> None:
        self.loop = loop
        self.close = close
        self.error: BaseException | None = None
        self.returned = threading.Event()
        self._close = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        try:
            self.loop.run()
        except BaseException as exc:
            self.error = exc
        finally:
            self.returned.set()
            if self.close:
                self._close.wait(TIMEOUT)
                self.loop.close()

    def start(self) -> LoopThread:
        self._thread.start()
        return self

    def finish(self) -> None:
        if not self.returned.is_set():
            self.loop.stop()  # (a stop request made after run() returned would stop the next run)
        assert self.returned.wait(TIMEOUT), "loop.run() did not return after stop()"
        self._close.set()
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "loop thread did not finish"


@contextmanager
def serving(factory: Callable[[], Any], **listen_options: Any) -> Iterator[Any]:
    """A loop listening on 127.0.0.1:<free port>, run in a thread, closed at the end.

    The loop keeps serving when a handler raises (the default), but the test still fails: the
    first such exception, or one that run() raised, is raised at the end unless the test took
    it (``runner.failures.clear()``, ``runner.error = None``).
    """
    loop = eploop.Loop()
    failures: list[BaseException] = []
    loop.set_exception_handler(lambda _loop, context: failures.append(context["exception"]))
    listener = loop.listen(("127.0.0.1", 0), factory, **listen_options)
    runner = LoopThread(loop)
    runner.port = listener.port  # type: ignore[attr-defined]
    runner.failures = failures  # type: ignore[attr-defined]
    runner.start()
    try:
        yield runner
    finally:
        runner.finish()
    if runner.error is not None:
        raise runner.error
    if failures:
        raise failures[0]


def connect(port: int, host: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection((host, port), timeout=TIMEOUT)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(65536, size - len(chunks)))
        if not chunk:
            break
        chunks += chunk
    return bytes(chunks)


def recv_all(sock: socket.socket) -> bytes:
    """Everything until EOF (bounded by the socket timeout)."""
    chunks = bytearray()
    while chunk := sock.recv(65536):
        chunks += chunk
    return bytes(chunks)


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets RST."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


class Process:
    """A child process whose stdout lines are collected by a thread and can be waited for."""

    def __init__(self, argv: list[str], stdin: int | None = subprocess.DEVNULL) -> None:
        self.popen = subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=CHILD_ENV,
            text=True,
        )
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.stderr = ""

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._new.put(line.rstrip("\n"))
        self._new.put(None)

    def wait_line(self, pattern: str, timeout: float = TIMEOUT) -> re.Match[str]:
        """The first line (from the start of output) matching ``pattern``."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        index = 0
        while True:
            while index < len(self.lines):
                match = compiled.search(self.lines[index])
                index += 1
                if match:
                    return match
            remaining = deadline - time.monotonic()
            try:
                line = self._new.get(timeout=max(0.0, remaining))
            except queue.Empty:
                raise AssertionError(
                    f"no line matching {pattern!r} within {timeout}s; output: {self.lines}"
                ) from None
            if line is None:
                self._new.put(None)
                raise AssertionError(
                    f"process ended without a line matching {pattern!r}; output: {self.lines}; "
                    f"stderr: {self._stderr_now()}"
                )
            self.lines.append(line)

    def wait_count(self, pattern: str, count: int, timeout: float = TIMEOUT) -> None:
        """Wait until ``count`` lines match ``pattern``."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while sum(1 for line in self.lines if compiled.search(line)) < count:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"fewer than {count} lines match {pattern!r}: {self.lines}"
            try:
                line = self._new.get(timeout=remaining)
            except queue.Empty:
                continue
            assert line is not None, f"process ended; output: {self.lines}"
            self.lines.append(line)

    def _stderr_now(self) -> str:
        if self.popen.poll() is not None and self.popen.stderr is not None and not self.stderr:
            self.stderr = self.popen.stderr.read()
        return self.stderr

    def finish(self, signum: int | None = None, timeout: float = TIMEOUT) -> int:
        """Optionally signal the process, wait for it, collect all output; returns its status."""
        if signum is not None and self.popen.poll() is None:
            self.popen.send_signal(signum)
        try:
            status = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(TIMEOUT)
            raise AssertionError(
                f"process did not exit within {timeout}s; output: {self.lines}"
            ) from None
        self._reader.join(TIMEOUT)
        while (line := self._new.get_nowait() if not self._new.empty() else None) is not None:
            self.lines.append(line)
        self._stderr_now()
        return status

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(TIMEOUT)
        for stream in (self.popen.stdout, self.popen.stderr, self.popen.stdin):
            if stream is not None:
                stream.close()


@contextmanager
def example(name: str, *args: str, stdin: int | None = subprocess.DEVNULL) -> Iterator[Process]:
    """Run ``examples/<name>`` with ``args``; killed (by its PID) if the test leaves it running."""
    proc = Process([sys.executable, str(EXAMPLES / name), *args], stdin=stdin)
    try:
        yield proc
    finally:
        proc.kill()


@contextmanager
def example_server(name: str, *args: str) -> Iterator[tuple[Process, int]]:
    """Start an example server on port 0 and yield it with the port it printed."""
    with example(name, "0", *args) as proc:
        port = int(proc.wait_line(r"^listening (\d+)$").group(1))
        yield proc, port


def closes_match_accepts(lines: list[str]) -> dict[str, str]:
    """Check the DESIGN.md section 4 log: every accepted id closed exactly once; id -> reason."""
    accepted = [m.group(1) for line in lines if (m := re.match(r"^accept (\d+) \S+:\d+$", line))]
    closes = [
        m.groups() for line in lines if (m := re.match(r"^close (\d+) ([a-z_]+) (\d+)$", line))
    ]
    closed_ids = [c[0] for c in closes]
    assert sorted(closed_ids) == sorted(accepted), f"accept/close mismatch in {lines}"
    assert len(set(closed_ids)) == len(closed_ids), f"an id closed twice in {lines}"
    return {conn_id: reason for conn_id, reason, _errno in closes}


def cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)
