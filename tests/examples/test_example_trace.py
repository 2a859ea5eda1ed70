"""The trace hook from the outside: `echo_server --trace` and EPLOOP_TRACE=1 explain, on stderr,
every decision about a connection, down to the close and its cause."""

from __future__ import annotations

import re
import socket
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def wait_trace(server, pattern: str, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    regex = re.compile(pattern)
    while time.monotonic() < deadline:
        found = [line for line in list(server.stderr_lines) if regex.search(line)]
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"no stderr line matching {pattern!r}\n{server.log()}")


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_echo_server_trace_explains_a_reset(run_example, h):
    server = run_example("echo_server", "--trace")
    server.allow_stderr = True
    client = h.connect(server.port)
    (conn,) = server.wait_accepts(1)
    client.sendall(b"hello")
    assert h.recv_exact(client, 5) == b"hello"
    reset(client)
    assert server.wait_close(conn)[0] == "peer_reset"
    wait_trace(server, rf"^trace {conn} epoll IN")
    wait_trace(server, rf"^trace {conn} read 5$")
    wait_trace(server, rf"^trace {conn} write 5$")
    closes = wait_trace(server, rf"^trace {conn} close ")
    assert closes == [f"trace {conn} close peer_reset 104"], server.log()
    # The trace goes to stderr only: the event log on stdout keeps its format.
    assert not any(line.startswith("trace") for line in server.lines)


def test_epl_trace_environment_traces_any_program(run_program, h):
    """No code change: the Python example, run with EPLOOP_TRACE=1, traces its connections."""
    echo = ROOT / "python-bindings" / "examples" / "echo_server.py"
    server = run_program(
        [sys.executable, str(echo), "0"],
        env={"EPLOOP_TRACE": "1", "PYTHONPATH": str(ROOT / "python-bindings")},
    )
    server.allow_stderr = True
    client = h.connect(server.port)
    (conn,) = server.wait_accepts(1)
    client.sendall(b"ping")
    assert h.recv_exact(client, 4) == b"ping"
    client.close()
    assert server.wait_close(conn) == ("peer_eof", 0)
    wait_trace(server, rf"^trace {conn} read eof$")
    wait_trace(server, rf"^trace {conn} close peer_eof 0$")
