"""Shared helpers for the C example tests.

`run_example(name, *args)` starts `c-examples/build/<name> 0 *args`, waits for its
`listening <port>` line and collects its event log (listening/accept/close lines) on a reader thread.
Every process started this way is killed by PID at teardown, and its log is then checked: every
line that starts with `listening `, `accept ` or `close ` has the exact format, no id is closed
twice, and nothing went to stderr (unless the test set `allow_stderr`).

Test modules reach the helpers below through the `h` fixture (this module), so they never import
`conftest` by name (several conftest.py files share that name in one pytest run).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD_DIR = ROOT / "c-examples" / "build"
LIB_DIR = ROOT / "target" / "release"
INCLUDE_DIR = ROOT / "include"
C_TEST_DIR = Path(__file__).resolve().parent / "c"

LISTEN_RE = re.compile(r"^listening (\d+)$")
ACCEPT_RE = re.compile(r"^accept (\d+) (\S+):(\d+)$")
CLOSE_RE = re.compile(
    r"^close (\d+) (peer_eof|peer_reset|error|local|abort|timeout|loop_freed) (\d+)$"
)
RESERVED = {"listening": LISTEN_RE, "accept": ACCEPT_RE, "close": CLOSE_RE}

TIMEOUT = 5.0  # seconds; bound on every wait for a line, a socket op or a process

DASHES = "-" * 40
SEED_RESPONSE = (
    b"HTTP/1.0 200 OK\r\n"
    b"Date: Mon, 1 Jan 1996 01:01:01 GMT\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 13\r\n"
    b"\r\n"
    b"Hello, world!"
)
KEEP_ALIVE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Date: Mon, 1 Jan 1996 01:01:01 GMT\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 13\r\n"
)
KEEP_ALIVE_RESPONSE = KEEP_ALIVE_HEAD + b"\r\nHello, world!"
KEEP_ALIVE_LAST_RESPONSE = KEEP_ALIVE_HEAD + b"Connection: close\r\n\r\nHello, world!"


class ExampleProcess:
    """One running example binary and the lines it has printed so far."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        stdin: int | None = subprocess.DEVNULL,
        pass_fds: Sequence[int] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=tuple(pass_fds),
            env=None if env is None else {**os.environ, **env},
        )
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._cond = threading.Condition()
        self._stdout_done = False
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.lines, True)),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr_lines, False)),
        ]
        for reader in self._readers:
            reader.daemon = True
            reader.start()
        self.port = 0
        self.allow_stderr = False  # a test that expects diagnostics on stderr sets this

    def wait_listening(self, timeout: float = TIMEOUT) -> int:
        self.port = int(self.wait_for(LISTEN_RE, timeout=timeout)[0].group(1))
        return self.port

    def _read(self, stream, sink: list[str], is_stdout: bool) -> None:
        for raw in stream:
            with self._cond:
                sink.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            if is_stdout:
                self._stdout_done = True
            self._cond.notify_all()

    # --- reading the log -------------------------------------------------------------------

    def log(self) -> str:
        with self._cond:
            out = "\n".join(self.lines)
            err = "\n".join(self.stderr_lines)
        return f"$ {' '.join(self.argv)}\n--- stdout ---\n{out}\n--- stderr ---\n{err}"

    def mark(self) -> int:
        """Index of the next line; pass it as `since` to look only at later lines."""
        with self._cond:
            return len(self.lines)

    def matches(self, pattern: re.Pattern[str] | str, since: int = 0) -> list[re.Match[str]]:
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        with self._cond:
            lines = self.lines[since:]
        return [m for m in (regex.match(line) for line in lines) if m]

    def wait_for(
        self,
        pattern: re.Pattern[str] | str,
        count: int = 1,
        timeout: float = TIMEOUT,
        since: int = 0,
    ) -> list[re.Match[str]]:
        """Wait until at least `count` lines (from index `since`) match; return the matches."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for m in (regex.match(line) for line in self.lines[since:]) if m]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stdout_done:
                    break
                self._cond.wait(remaining)
        raise AssertionError(
            f"expected {count} line(s) matching {regex.pattern!r}, got {len(found)} "
            f"within {timeout}s\n{self.log()}"
        )

    def accepts(self, since: int = 0) -> list[tuple[int, str, int]]:
        return [(int(m[1]), m[2], int(m[3])) for m in self.matches(ACCEPT_RE, since)]

    def closes(self, since: int = 0) -> list[tuple[int, str, int]]:
        return [(int(m[1]), m[2], int(m[3])) for m in self.matches(CLOSE_RE, since)]

    def wait_accepts(self, count: int, timeout: float = TIMEOUT, since: int = 0) -> list[int]:
        return [int(m[1]) for m in self.wait_for(ACCEPT_RE, count, timeout, since)]

    def wait_close(self, conn_id: int, timeout: float = TIMEOUT) -> tuple[str, int]:
        """Wait for the close line of `conn_id`; return (reason, errno)."""
        match = self.wait_for(rf"^close {conn_id} (\S+) (\d+)$", timeout=timeout)[0]
        return match[1], int(match[2])

    def check_log(self) -> None:
        """The event-log contract: exact formats, one `listening` line, at most one close per id."""
        with self._cond:
            lines = list(self.lines)
        closed: set[int] = set()
        accepted: set[int] = set()
        listening = 0
        for line in lines:
            word = line.split(" ", 1)[0]
            if word in RESERVED and line.startswith(word + " "):
                assert RESERVED[word].match(line), f"malformed log line {line!r}\n{self.log()}"
            if word == "listening":
                listening += 1
            elif word == "accept":
                conn_id = int(ACCEPT_RE.match(line)[1])
                assert conn_id > 0 and conn_id not in accepted, f"bad accept {line!r}"
                accepted.add(conn_id)
            elif word == "close":
                conn_id = int(CLOSE_RE.match(line)[1])
                assert conn_id not in closed, f"second close for {conn_id}\n{self.log()}"
                closed.add(conn_id)
        assert listening <= 1, f"{listening} listening lines\n{self.log()}"
        assert self.allow_stderr or not self.stderr_lines, f"unexpected stderr\n{self.log()}"

    # --- process control -------------------------------------------------------------------

    def cpu_ticks(self) -> int:
        """utime + stime of the process, in clock ticks (/proc/<pid>/stat fields 14 and 15)."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return int(fields[11]) + int(fields[12])

    def send_signal(self, signo: int) -> None:
        assert self.proc.poll() is None, f"process already exited\n{self.log()}"
        self.proc.send_signal(signo)

    def wait_exit(self, timeout: float = TIMEOUT) -> int:
        """Wait for the process to exit and for its output to be read; return the exit code."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"process did not exit within {timeout}s\n{self.log()}")
        for reader in self._readers:
            reader.join(timeout)
        return code

    def kill(self) -> None:
        if self.proc.stdin:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(TIMEOUT)
        for reader in self._readers:
            reader.join(TIMEOUT)


def example_path(name: str) -> Path:
    path = BUILD_DIR / name
    if not path.exists():
        pytest.fail(f"{path} is missing: build the C examples first with `make examples`")
    return path


@pytest.fixture
def run_program() -> Iterator[Callable[..., ExampleProcess]]:
    """Factory: run_program(argv, stdin=..., pass_fds=...) -> ExampleProcess, after its
    `listening <port>` line. Killed by PID at teardown; its log is checked then."""
    started: list[ExampleProcess] = []

    def start(argv: Sequence[str], listen_timeout: float = TIMEOUT, **kwargs) -> ExampleProcess:
        ex = ExampleProcess(argv, **kwargs)
        started.append(ex)
        ex.wait_listening(listen_timeout)
        return ex

    yield start
    for ex in started:
        ex.kill()
    for ex in started:
        ex.check_log()


@pytest.fixture
def run_example(run_program) -> Callable[..., ExampleProcess]:
    """Factory: run_example("echo_server", "-q") runs `c-examples/build/echo_server 0 -q`."""

    def start(name: str, *args: str, port: str = "0", **kwargs) -> ExampleProcess:
        return run_program([str(example_path(name)), port, *args], **kwargs)

    return start


# Bound now: every tests/ directory has a conftest.py, and in one pytest run the name "conftest"
# in sys.modules points at whichever was imported last.
_THIS_MODULE = sys.modules[__name__]


@pytest.fixture
def h():
    """This module: constants and client helpers for the tests."""
    return _THIS_MODULE


# --- clients -----------------------------------------------------------------------------------


def connect(port: int, host: str = "127.0.0.1", timeout: float = TIMEOUT) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout)


def recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = sock.recv(min(size, 1 << 16))
        if not chunk:
            raise AssertionError(f"EOF with {size} bytes still expected")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def recv_until_eof(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    chunks = []
    total = 0
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        assert total <= limit, f"more than {limit} bytes before EOF"


def assert_closed_by_server(sock: socket.socket) -> None:
    """Read what is pending; the server's end must then be closed (EOF or RST) within TIMEOUT."""
    try:
        while sock.recv(1 << 16):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError("the server did not close the connection") from None


def reset_close(sock: socket.socket) -> None:
    """Close with SO_LINGER {on, 0}: the kernel sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def split_http_responses(data: bytes) -> list[bytes]:
    """Split a byte stream into complete HTTP responses framed by Content-Length."""
    responses = []
    while data:
        head_end = data.find(b"\r\n\r\n")
        assert head_end >= 0, f"incomplete response head: {data!r}"
        head = data[: head_end + 4]
        match = re.search(rb"\r\nContent-Length: (\d+)\r\n", head)
        assert match, f"no Content-Length in {head!r}"
        end = head_end + 4 + int(match[1])
        assert len(data) >= end, f"truncated body: {data!r}"
        responses.append(data[:end])
        data = data[end:]
    return responses


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not installed; CI installs it (apt-get install {name})")
    return path


def curl(url_args: Sequence[str], timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """curl -s -S -i (headers as received, then the body), bounded in time."""
    argv = [require_tool("curl"), "-s", "-S", "-i", "--max-time", str(int(timeout)), *url_args]
    return subprocess.run(argv, capture_output=True, timeout=timeout + 5)
