"""watch_fd: a TCP listener plus a non-socket fd (a pipe) in one loop, both reported alike."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import time

WATCHING_RE = r"^watching (\d+) fd (\d+)$"


def received(server, conn_id: int) -> bytes:
    """Everything the `data <id> "..."` lines of `conn_id` carried, decoded."""
    return b"".join(
        ast.literal_eval("b" + m[1]) for m in server.matches(rf'^data {conn_id} (".*")$')
    )


def wait_received(server, conn_id: int, expected: bytes, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    got = received(server, conn_id)
    while got != expected and expected.startswith(got) and time.monotonic() < deadline:
        time.sleep(0.02)
        got = received(server, conn_id)
    assert got == expected, server.log()


def test_stdin_pipe_and_tcp_client(run_example, h):
    server = run_example("watch_fd", stdin=subprocess.PIPE)
    watch_id = int(server.wait_for(WATCHING_RE)[0][1])

    server.proc.stdin.write(b"hello from the pipe\n")
    server.proc.stdin.flush()
    wait_received(server, watch_id, b"hello from the pipe\n")

    client = h.connect(server.port)
    (conn_id,) = server.wait_accepts(1)
    assert conn_id != watch_id
    client.sendall(b'tcp says "hi"\t\x00\xff\n')
    wait_received(server, conn_id, b'tcp says "hi"\t\x00\xff\n')

    # The pipe's writer goes away: one close line, like a socket's peer FIN.
    server.proc.stdin.close()
    assert server.wait_close(watch_id) == ("peer_eof", 0)

    # The loop goes on serving the socket.
    client.sendall(b"still here\n")
    wait_received(server, conn_id, b'tcp says "hi"\t\x00\xff\nstill here\n')
    client.close()
    assert server.wait_close(conn_id) == ("peer_eof", 0)

    server.send_signal(signal.SIGINT)
    assert server.wait_exit() == 0
    assert sorted(server.closes()) == sorted([(watch_id, "peer_eof", 0), (conn_id, "peer_eof", 0)])


def test_fd_option_with_a_writer_process(run_example, h):
    read_end, write_end = os.pipe()
    try:
        server = run_example("watch_fd", "--fd", str(read_end), pass_fds=(read_end,))
    finally:
        os.close(read_end)
    watch_id = int(server.wait_for(rf"^watching (\d+) fd {read_end}$")[0][1])
    # A separate process writes into the pipe and exits; ours is the last other writer.
    writer = subprocess.run(
        ["sh", "-c", "printf 'line one\\nline two\\n'"], stdout=write_end, timeout=h.TIMEOUT
    )
    os.close(write_end)
    assert writer.returncode == 0
    assert server.wait_close(watch_id) == ("peer_eof", 0)
    assert received(server, watch_id) == b"line one\nline two\n"
    server.send_signal(signal.SIGTERM)
    assert server.wait_exit() == 0


def test_no_stdin_and_quiet(run_example, h):
    server = run_example("watch_fd", "--no-stdin", "-q")
    client = h.connect(server.port)
    client.sendall(b"data that is not printed\n")
    client.close()
    time.sleep(0.3)  # nothing to wait for: -q prints nothing
    server.send_signal(signal.SIGINT)
    assert server.wait_exit() == 0
    assert server.lines == [f"listening {server.port}"]
