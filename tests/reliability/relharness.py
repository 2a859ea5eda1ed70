"""Shared helpers for the eploop reliability suite: building the C pieces, running a server
that prints the event log (listening/accept/close lines, see the README), the connection oracle, peers, /proc figures.

Standard library only, so conform.py and soak.py run with a bare python3.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BUILD = HERE / "build"
LIBDIR = ROOT / "target" / "release"
LIB = LIBDIR / "libeploop.so"
INCLUDE = ROOT / "include"
ASAN_LIBDIR = ROOT / "target" / "asan" / "x86_64-unknown-linux-gnu" / "release"

REASONS = {"peer_eof", "peer_reset", "error", "local", "abort", "timeout", "loop_freed"}
ECONNRESET, EPIPE = 104, 32
EP_ESTALE = -4001
# Lines a correct library never makes cmd_server print.
ANOMALIES = ("nested", "unknown", "baduser", "after_free", "register_failed", "set_user_failed")

# ----------------------------------------------------------------------------- build


class BuildError(RuntimeError):
    pass


def _stale(target: Path, sources: Iterable[Path]) -> bool:
    if not target.exists():
        return True
    t = target.stat().st_mtime
    return any(s.stat().st_mtime > t for s in sources)


def _run_gcc(args: list[str]) -> None:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(args)}\n{proc.stderr}")


def build_asan_library() -> Path:
    """Build libeploop.so with AddressSanitizer into target/asan (nightly flag via RUSTC_BOOTSTRAP;
    --target keeps build scripts uninstrumented). The cdylib leaves the __asan_* symbols
    undefined: the ASan runtime of the gcc-built executable (libasan.so) provides them."""
    env = dict(os.environ, RUSTC_BOOTSTRAP="1", RUSTFLAGS="-Zsanitizer=address")
    proc = subprocess.run(["cargo", "build", "--release", "--target", "x86_64-unknown-linux-gnu",
                           "--target-dir", str(ROOT / "target" / "asan")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise BuildError(f"ASan build of the library failed:\n{proc.stderr[-4000:]}")
    return ASAN_LIBDIR / "libeploop.so"


def build(asan: bool = False) -> dict[str, Path]:
    """Compile cmd_server (against target/release, or the ASan library), faultshim.so and
    allocount.so."""
    libdir = ASAN_LIBDIR if asan else LIBDIR
    lib = libdir / "libeploop.so"
    header = INCLUDE / "eploop.h"
    soname = libdir / "libeploop.so.0"
    if asan and lib.exists() and not soname.exists():
        soname.symlink_to("libeploop.so")
    for need, hint in ((lib, "run `make lib`" if not asan else "see tests/reliability/README.md (ASan)"),
                       (soname, "run `make lib` (it links the soname libeploop.so.0)"),
                       (header, "run `make lib`")):
        if not need.exists():
            raise BuildError(f"{need} is missing: {hint}")
    BUILD.mkdir(exist_ok=True)
    server = BUILD / ("cmd_server_asan" if asan else "cmd_server")
    src = HERE / "cmd_server.c"
    if _stale(server, [src, lib, header]):
        extra = ["-fsanitize=address", "-fno-omit-frame-pointer"] if asan else []
        _run_gcc(["gcc", "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror", "-O1", "-g", *extra,
                  f"-I{INCLUDE}", "-o", str(server), str(src), f"-L{libdir}", "-leploop",
                  f"-Wl,-rpath,{libdir}"])
    shim = BUILD / "faultshim.so"
    shim_src = HERE / "faultshim.c"
    if _stale(shim, [shim_src]):
        _run_gcc(["gcc", "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror", "-O2", "-g", "-fPIC",
                  "-shared", "-o", str(shim), str(shim_src), "-ldl"])
    counter = BUILD / "allocount.so"
    counter_src = HERE / "allocount.c"
    if _stale(counter, [counter_src]):
        _run_gcc(["gcc", "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror", "-O2", "-g", "-fPIC",
                  "-shared", "-o", str(counter), str(counter_src)])
    return {"server": server, "shim": shim, "allocount": counter}


# ----------------------------------------------------------------------------- data pattern

_PERIOD = 251 * 256
_PATTERN = bytes(((k * 7) + (k // 251) * 11 + 3) & 0xFF for k in range(_PERIOD))


def pattern(offset: int, n: int) -> bytes:
    """Bytes offset..offset+n of cmd_server's WRITE/STREAM stream: (k*7 + (k/251)*11 + 3) mod 256."""
    start = offset % _PERIOD
    reps = (start + n) // _PERIOD + 1
    return (_PATTERN * reps)[start:start + n] if reps > 1 else _PATTERN[start:start + n]


def first_mismatch(got: bytes, want: bytes) -> int:
    """Index of the first differing byte of got against want[:len(got)], or -1 if got is a prefix."""
    if len(got) > len(want):
        return len(want)
    if want[:len(got)] == got:
        return -1
    lo, hi = 0, len(got)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if got[lo:mid] == want[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


# ----------------------------------------------------------------------------- the oracle


@dataclass
class ConnRecord:
    id: int
    peer: str = ""
    bytes_in: int = 0
    data_events: int = 0
    writable_events: int = 0
    close_reason: str | None = None
    close_err: int | None = None
    closes: int = 0
    eof_seen: bool = False
    lines: list[str] = field(default_factory=list)


class Oracle:
    """Checks one event log, line by line, against the lifecycle every connection must follow:
    accept -> data* -> exactly one close; nothing for an id after its close; ids never reused;
    no callback nesting. Call finish() once the server has exited."""

    def __init__(self, strict: bool = True, keep_lines: int = 40) -> None:
        self.strict = strict  # cmd_server (knows its listener id) versus any example server
        self.keep_lines = keep_lines
        self.conns: dict[int, ConnRecord] = {}
        self.by_peer_port: dict[int, int] = {}
        self.listeners: set[int] = set()
        self.closed_listeners: set[int] = set()
        self.orphan_closes: dict[int, str] = {}
        self.violations: list[str] = []
        self.freed = False
        self.lines_seen = 0
        self.accepts = 0
        self.closes = 0
        self.bytes_in = 0
        self.reasons: dict[str, int] = {}
        self.stale_results: list[str] = []
        self.port: int | None = None

    def _bad(self, msg: str) -> None:
        if len(self.violations) < 200:
            self.violations.append(msg)

    def _record(self, cid: int, line: str) -> ConnRecord | None:
        rec = self.conns.get(cid)
        if rec is not None and self.keep_lines and len(rec.lines) < self.keep_lines:
            rec.lines.append(line)
        return rec

    def feed(self, line: str) -> None:
        self.lines_seen += 1
        parts = line.split()
        if not parts:
            return
        word = parts[0]
        if self.freed and word in ("accept", "data", "writable", "close"):
            self._bad(f"callback after ep_loop_free returned: {line!r}")
        if word in ANOMALIES:
            self._bad(f"anomaly: {line!r}")
        elif word == "listening" and len(parts) >= 2:
            self.port = int(parts[1])
        elif word == "listener" and len(parts) >= 2:
            self.listeners.add(int(parts[1]))
        elif word == "accept" and len(parts) >= 3:
            self._on_accept(int(parts[1]), parts[2], line)
        elif word == "register" and len(parts) >= 2:
            cid = int(parts[1])
            if cid in self.conns or cid in self.listeners:
                self._bad(f"id reused: {line!r}")
            self.conns[cid] = ConnRecord(cid, peer="socketpair")
        elif word == "data" and len(parts) >= 3:
            rec = self._live(int(parts[1]), line)
            if rec:
                n = int(parts[2])
                rec.bytes_in += n
                rec.data_events += 1
                self.bytes_in += n
                if n == 0:
                    rec.eof_seen = True
        elif word == "writable" and len(parts) >= 2:
            rec = self._live(int(parts[1]), line)
            if rec:
                rec.writable_events += 1
        elif word == "close" and len(parts) >= 4:
            self._on_close(int(parts[1]), parts[2], int(parts[3]), line)
        elif word == "stale":
            self.stale_results.append(line)
            if len(parts) > 2 and parts[2] != "ok":
                self._bad(f"call with a closed id did not return EP_ESTALE: {line!r}")
        elif word == "freed":
            self.freed = True
        elif word in ("queued", "cmd", "closing") and len(parts) >= 2 and parts[1].isdigit():
            self._record(int(parts[1]), line)

    def _on_accept(self, cid: int, peer: str, line: str) -> None:
        self.accepts += 1
        if cid in self.conns or cid in self.listeners or cid in self.orphan_closes:
            self._bad(f"id reused: {line!r}")
        if cid <= 0:
            self._bad(f"id not positive: {line!r}")
        rec = ConnRecord(cid, peer=peer)
        rec.lines.append(line)
        self.conns[cid] = rec
        port = peer.rsplit(":", 1)[-1]
        if port.isdigit():
            self.by_peer_port[int(port)] = cid

    def _live(self, cid: int, line: str) -> ConnRecord | None:
        rec = self._record(cid, line)
        if rec is None:
            self._bad(f"event for an id never accepted: {line!r}")
        elif rec.closes:
            self._bad(f"event after close: {line!r}")
            return None
        return rec

    def _on_close(self, cid: int, reason: str, err: int, line: str) -> None:
        self.closes += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if reason not in REASONS:
            self._bad(f"unknown close reason: {line!r}")
        if cid in self.listeners:
            if cid in self.closed_listeners:
                self._bad(f"listener closed twice: {line!r}")
            self.closed_listeners.add(cid)
            return
        rec = self._record(cid, line)
        if rec is None:
            # A generic server does not announce its listener: allow one close per such id.
            if self.strict or cid in self.orphan_closes:
                self._bad(f"close for an id never accepted (or closed twice): {line!r}")
            self.orphan_closes[cid] = reason
            return
        rec.closes += 1
        if rec.closes > 1:
            self._bad(f"second close: {line!r}")
            return
        rec.close_reason, rec.close_err = reason, err

    def finish(self, allow_open: bool = False) -> list[str]:
        """Violations, including ids left without a close (unless allow_open)."""
        out = list(self.violations)
        if not allow_open:
            for rec in self.conns.values():
                if rec.closes == 0:
                    out.append(f"id {rec.id} ({rec.peer}) never closed; its log: {rec.lines[-5:]}")
            if self.strict:
                for lid in self.listeners - self.closed_listeners:
                    out.append(f"listener {lid} never closed")
        return out

    def open_ids(self) -> list[int]:
        return [c.id for c in self.conns.values() if c.closes == 0]


# ----------------------------------------------------------------------------- server process


class ServerError(AssertionError):
    pass


class Server:
    """A server subprocess printing the event log. Its stdout is read by a thread and fed to an
    Oracle; tests wait on log lines with a timeout."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, strict: bool = True,
                 nofile: int | None = None, wrapper: list[str] | None = None, keep_log: bool = True,
                 start_timeout: float = 20.0) -> None:
        self.argv = list(argv)
        if nofile is not None:
            self.argv = ["prlimit", f"--nofile={nofile}:{nofile}", "--", *self.argv]
        if wrapper:
            self.argv = [*wrapper, *self.argv]
        self._tracer = bool(wrapper) and Path(wrapper[0]).name == "strace"
        self.oracle = Oracle(strict=strict)
        self.keep_log = keep_log  # False: only the oracle sees the lines (long soaks)
        self.log: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self._stderr = tempfile.TemporaryFile(mode="w+b")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=self._stderr, env=full_env,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            line = self.wait_for(lambda l: l.startswith("listening "), start_timeout, what="listening line")
            self.port = int(line.split()[1])
            if self.port <= 0:
                raise ServerError(f"bad listening line {line!r}")
        except BaseException:
            self.kill()
            raise

    @property
    def pid(self) -> int:
        """Pid of the server itself: prlimit and valgrind exec into it; a tracer (strace) runs
        it as its child."""
        if self._tracer:
            try:
                with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                    kids = f.read().split()
                if kids:
                    return int(kids[0])
            except OSError:
                pass
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._cond:
                starting = self.oracle.port is None
                self.oracle.feed(line)
                if self.keep_log or starting:
                    self.log.append(line)
                self._last = line
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def settled_stderr_text(self, limit: int = 4000, quiet: float = 0.3, bound: float = 3.0) -> str:
        """stderr once the server has stopped writing to it for `quiet` seconds (at most `bound`):
        a record written just after the event a client saw (a trace line after the close(2)
        whose reset the client read) is then included."""
        deadline = time.monotonic() + bound
        size = -1
        while time.monotonic() < deadline:
            now = os.fstat(self._stderr.fileno()).st_size
            if now == size:
                break
            size = now
            time.sleep(quiet)
        return self.stderr_text(limit)

    def stderr_text(self, limit: int = 4000) -> str:
        self._stderr.flush()
        self._stderr.seek(0)
        data = self._stderr.read()
        return data[-limit:].decode("utf-8", "replace")

    def wait_for(self, pred: Callable[[str], bool], timeout: float, what: str = "log line",
                 start: int = 0) -> str:
        """First log line (from index start) satisfying pred; raises ServerError on timeout/exit."""
        deadline = time.monotonic() + timeout
        idx = start
        with self._cond:
            while True:
                while idx < len(self.log):
                    if pred(self.log[idx]):
                        return self.log[idx]
                    idx += 1
                if self._eof:
                    try:
                        rc = self.proc.wait(2)
                    except subprocess.TimeoutExpired:
                        rc = None
                    raise ServerError(f"server exited ({rc}) before {what}; "
                                      f"stderr: {self.stderr_text()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ServerError(f"timeout ({timeout}s) waiting for {what}; last lines: {self.log[-8:]}")
                self._cond.wait(min(left, 0.5))

    def wait_until(self, pred: Callable[[Oracle], bool], timeout: float, what: str) -> None:
        """Wait until pred(oracle) holds (evaluated under the log lock)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred(self.oracle):
                if self._eof:
                    raise ServerError(f"server exited before {what}; stderr: {self.stderr_text()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ServerError(f"timeout ({timeout}s) waiting for {what}; last lines: {self.log[-8:]}")
                self._cond.wait(min(left, 0.5))

    def conn_id(self, sock: socket.socket, timeout: float = 10.0) -> int:
        """The server's id for this client socket (matched on the client's port)."""
        port = sock.getsockname()[1]
        self.wait_until(lambda o: port in o.by_peer_port, timeout, f"accept of client port {port}")
        return self.oracle.by_peer_port[port]

    def record(self, cid: int) -> ConnRecord:
        with self._cond:
            return self.oracle.conns[cid]

    def wait_closed(self, cid: int, timeout: float = 10.0) -> ConnRecord:
        self.wait_until(lambda o: o.conns[cid].closes > 0, timeout, f"close of id {cid}")
        return self.record(cid)

    def lines_for(self, cid: int) -> list[str]:
        key = str(cid)
        with self._cond:
            return [l for l in self.log if len(l.split()) > 1 and l.split()[1] == key]

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def rss_kib(self) -> int:
        return proc_rss_kib(self.pid)

    def fd_count(self) -> int:
        return proc_fd_count(self.pid)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the server and wait for it; returns its exit status."""
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise ServerError(f"server did not exit within {timeout}s of signal {sig}; last lines: {self.log[-8:]}")
        self._reader.join(10)
        return rc

    def wait_exit(self, timeout: float = 30.0) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise ServerError(f"server did not exit within {timeout}s; last lines: {self.log[-8:]}")
        self._reader.join(10)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def finish(self, allow_open: bool = False, expect_rc: int | None = 0) -> None:
        """Stop (if running), then raise on a bad exit status or any oracle violation."""
        rc = self.stop() if self.proc.poll() is None else self.wait_exit()
        problems = []
        if expect_rc is not None and rc != expect_rc:
            problems.append(f"exit status {rc} (want {expect_rc}); stderr: {self.stderr_text()}")
        problems += self.oracle.finish(allow_open=allow_open)
        if problems:
            raise ServerError("server log broke the oracle:\n  " + "\n  ".join(problems[:30]))


def start_cmd_server(bins: dict[str, Path], *args: str, edge: bool = False, faults: dict[str, str] | None = None,
                     env: dict[str, str] | None = None, binary: Path | None = None, **kw) -> Server:
    """Start cmd_server on port 0; faults (FS_* settings) preload faultshim.so."""
    argv = [str(binary or bins["server"]), "0", *(["--edge"] if edge else []), *args]
    full_env = dict(env or {})
    if faults is not None:
        full_env["LD_PRELOAD"] = str(bins["shim"])
        full_env.update(faults)
    return Server(argv, env=full_env, **kw)


# ----------------------------------------------------------------------------- peers


def connect(port: int, host: str = "127.0.0.1", timeout: float = 10.0, rcvbuf: int | None = None) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect((host, port))
    return s


def offer(port: int, message: bytes = b"ECHO\nping", timeout: float = 5.0) -> socket.socket | None:
    """Connect and send; None if the server reset the connection before connect() returned
    (a loop shedding load on loopback can be that quick)."""
    try:
        s = connect(port, timeout=timeout)
    except (ConnectionResetError, ConnectionRefusedError):
        return None
    try:
        s.sendall(message)
    except (ConnectionResetError, BrokenPipeError):
        pass  # already turned away: serve_or_refuse sees it
    return s


SIOCOUTQ = 0x5411  # bytes in the send queue not yet acknowledged by the peer


def unsent(sock: socket.socket) -> int:
    import fcntl
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0\0\0\0"))[0]


def rst_close(sock: socket.socket, settle: float = 2.0) -> int:
    """Close with SO_LINGER {1, 0}: the kernel sends RST instead of FIN, and drops whatever it
    still holds to send. First waits (up to settle seconds) until the peer's kernel has acked
    everything, so "bytes sent before the RST" is well defined; returns the bytes dropped."""
    deadline = time.monotonic() + settle
    left = unsent(sock)
    while left and time.monotonic() < deadline:
        time.sleep(0.002)
        left = unsent(sock)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    return left


def recv_until_eof(sock: socket.socket, timeout: float = 20.0, limit: int | None = None) -> tuple[bytes, str]:
    """Read until EOF, reset, timeout or limit bytes; returns (data, 'eof'|'reset'|'timeout'|'limit')."""
    chunks = []
    got = 0
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return b"".join(chunks), "timeout"
        sock.settimeout(min(left, 5.0))
        try:
            b = sock.recv(1 << 20)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return b"".join(chunks), "reset"
        if not b:
            return b"".join(chunks), "eof"
        chunks.append(b)
        got += len(b)
        if limit is not None and got >= limit:
            return b"".join(chunks), "limit"


def recv_exact(sock: socket.socket, n: int, timeout: float = 20.0) -> bytes:
    data, how = recv_until_eof(sock, timeout, limit=n)
    if len(data) < n:
        raise AssertionError(f"wanted {n} bytes, got {len(data)} ({how})")
    return data


def serve_or_refuse(socks: list[socket.socket], deadline: float) -> dict[socket.socket, str]:
    """Wait until each client got its echo ("served") or saw EOF/RST ("refused")."""
    sel = selectors.DefaultSelector()
    got: dict[socket.socket, bytes] = {}
    outcome: dict[socket.socket, str] = {}
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        got[s] = b""
    while len(outcome) < len(socks) and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            try:
                b = s.recv(100)
            except (ConnectionResetError, BrokenPipeError):
                b = b""
            except BlockingIOError:
                continue
            if not b:
                outcome[s] = "refused"
                sel.unregister(s)
                continue
            got[s] += b
            if got[s] == b"ping":
                outcome[s] = "served"
                sel.unregister(s)
    sel.close()
    for s in socks:
        outcome.setdefault(s, "hanging")
    return outcome


# ----------------------------------------------------------------------------- /proc figures


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def proc_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def proc_fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_during(pid: int, seconds: float) -> float:
    """CPU seconds the process used during a wall-clock interval."""
    before = proc_cpu_seconds(pid)
    time.sleep(seconds)
    return proc_cpu_seconds(pid) - before


def raise_nofile(n: int) -> int:
    """Raise this process's soft fd limit towards n (bounded by the hard limit); returns it."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(n, hard) if hard != resource.RLIM_INFINITY else n
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def loadgen(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run tests/reliability/loadgen.py in its own process; returns the completed process."""
    return subprocess.run([sys.executable, str(HERE / "loadgen.py"), *args], capture_output=True, text=True,
                          timeout=timeout)


if __name__ == "__main__":
    if sys.argv[1:] == ["build"]:
        print(build())
    elif sys.argv[1:] == ["build-asan"]:
        build_asan_library()
        print(build(asan=True))
    else:
        print("usage: relharness.py build|build-asan", file=sys.stderr)
        sys.exit(2)
