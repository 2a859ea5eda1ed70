"""The eploop echo demo: the seed 000 telnet session, replayed against c-examples/build/echo_server.

The seed script could not tell that its telnet client had quit: epoll kept reporting EPOLLIN,
recv() kept returning b"", and the script spun forever. This demo plays the telnet user (two
lines, then quit) and shows the server's event log instead: one `close <id> peer_eof 0`, then
silence. Standard library only; the whole demo is bounded to a few seconds and exits non-zero
if anything deviates from the expected story.

Run it with `make demo` (or: python c-examples/demo.py after `make examples`).
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

SERVER = Path(__file__).resolve().parent / "build" / "echo_server"
DEADLINE = time.monotonic() + 5.0  # the whole demo
CLOSE_RE = re.compile(
    r"^close (\d+) (peer_eof|peer_reset|error|local|abort|timeout|loop_freed) (\d+)$"
)


class DemoFailed(Exception):
    pass


def remaining() -> float:
    left = DEADLINE - time.monotonic()
    if left <= 0:
        raise DemoFailed("the demo ran out of time (5 s)")
    return left


class ServerLog:
    """The server's stdout, line by line, read on a thread so every wait has a timeout."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True).start()

    def _pump(self, stream) -> None:
        for raw in stream:
            self.lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self.lines.put(None)

    def expect(self, pattern: str, timeout: float = 2.0) -> re.Match[str]:
        """Print server lines as they come until one matches `pattern`."""
        end = time.monotonic() + min(timeout, remaining())
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                raise DemoFailed(f"no server line matching {pattern!r} in time") from None
            if line is None:
                raise DemoFailed(f"the server exited before printing {pattern!r}")
            self.seen.append(line)
            print(f"    server | {line}")
            match = re.match(pattern, line)
            if match:
                return match

    def quiet_for(self, seconds: float) -> list[str]:
        """Lines printed during the next `seconds` (none are expected)."""
        extra = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                line = self.lines.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            print(f"    server | {line}")
            extra.append(line)
        return extra


def cpu_ticks(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def run_demo(proc: subprocess.Popen) -> None:
    print("eploop demo: the seed 000 telnet session against c-examples/build/echo_server")
    log = ServerLog(proc)
    port = int(log.expect(r"^listening (\d+)$")[1])
    print(f"1. echo_server is listening on 127.0.0.1:{port}.")

    print("2. A telnet user connects and types two lines:")
    with socket.create_connection(("127.0.0.1", port), timeout=remaining()) as client:
        conn_id = log.expect(r"^accept (\d+) ")[1]
        for line in (b"123456\r\n", b"56\r\n"):
            print(f"    telnet > {line.decode().rstrip()}")
            client.sendall(line)
            echoed = b""
            while len(echoed) < len(line):
                client.settimeout(remaining())
                chunk = client.recv(len(line) - len(echoed))
                if not chunk:
                    raise DemoFailed("the server closed the connection unexpectedly")
                echoed += chunk
            if echoed != line:
                raise DemoFailed(f"echo mismatch: sent {line!r}, got {echoed!r}")
            print(f"    telnet < {echoed.decode().rstrip()}")
            log.expect(rf"^recv {conn_id} ")
        print("3. The user quits telnet (^] q): the client closes its socket.")
    close_line = log.expect(rf"^close {conn_id} ").string
    if not CLOSE_RE.match(close_line) or close_line != f"close {conn_id} peer_eof 0":
        raise DemoFailed(f"expected 'close {conn_id} peer_eof 0', got {close_line!r}")

    ticks = cpu_ticks(proc.pid)
    extra = log.quiet_for(0.5)
    burned = cpu_ticks(proc.pid) - ticks
    if extra:
        raise DemoFailed(f"the server kept talking after the close: {extra}")
    if burned >= 5:
        raise DemoFailed(f"the server burned {burned} CPU ticks in 0.5 s after the close")
    print(
        "4. One close line, reason peer_eof, and then silence: no empty reads, "
        f"{burned} CPU ticks in the next 0.5 s."
    )

    print("5. Ctrl-C (SIGINT) stops the server cleanly.")
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=min(2.0, remaining()))
    if code != 0:
        raise DemoFailed(f"the server exited with {code}, expected 0")
    print("   echo_server exited 0. Demo OK.")


def main() -> int:
    if not SERVER.exists():
        print(f"demo: {SERVER} is missing; build it with `make examples`", file=sys.stderr)
        return 1
    proc = subprocess.Popen([str(SERVER), "0"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        run_demo(proc)
        return 0
    except (DemoFailed, OSError, subprocess.TimeoutExpired) as exc:
        print(f"demo FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


if __name__ == "__main__":
    sys.exit(main())
