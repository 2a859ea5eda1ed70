"""Every example server: SIGINT/SIGTERM close what is open (logged as loop_freed) and exit 0;
-q leaves only the listening line."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

SERVERS = [
    ("echo_server",),
    ("http_server",),
    ("http_server", "--keep-alive", "--edge"),
    ("watch_fd",),
]
SERVER_IDS = ["echo", "http", "http-keep-alive-edge", "watch_fd"]


@pytest.mark.parametrize("signo", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("command", SERVERS, ids=SERVER_IDS)
def test_signal_closes_open_connections_and_exits_0(run_example, h, command, signo):
    name, *args = command
    server = run_example(name, *args, stdin=subprocess.PIPE)
    clients = [h.connect(server.port) for _ in range(3)]
    ids = server.wait_accepts(3)
    if name == "echo_server":  # prove the connections are live, not just accepted
        for client in clients:
            client.sendall(b"hi\n")
            assert h.recv_exact(client, 3) == b"hi\n"

    server.send_signal(signo)
    assert server.wait_exit() == 0, server.log()

    freed = [(conn_id, reason, err) for conn_id, reason, err in server.closes() if conn_id in ids]
    assert sorted(freed) == sorted((conn_id, "loop_freed", 0) for conn_id in ids), server.log()
    if name == "watch_fd":  # its stdin pipe was still open too
        watch_id = int(server.wait_for(r"^watching (\d+) fd 0$")[0][1])
        assert (watch_id, "loop_freed", 0) in server.closes()
    else:
        assert len(server.closes()) == 3
    for client in clients:
        h.assert_closed_by_server(client)
        client.close()


@pytest.mark.parametrize("command", SERVERS, ids=SERVER_IDS)
def test_quiet_prints_only_the_listening_line(run_example, h, command):
    name, *args = command
    server = run_example(name, *args, "-q", stdin=subprocess.PIPE)
    finished = h.connect(server.port)
    still_open = h.connect(server.port)
    if name == "echo_server":
        finished.sendall(b"quiet\n")
        assert h.recv_exact(finished, 6) == b"quiet\n"
    elif name == "http_server":
        finished.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert h.recv_until_eof(finished).endswith(b"Hello, world!")
    else:
        finished.sendall(b"quiet\n")
        server.proc.stdin.write(b"from stdin\n")
        server.proc.stdin.flush()
        time.sleep(0.3)  # nothing to wait for: -q prints nothing
    finished.close()
    server.send_signal(signal.SIGINT)
    assert server.wait_exit() == 0
    assert server.lines == [f"listening {server.port}"]
    still_open.close()
