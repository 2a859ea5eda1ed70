"""http_server keeps per-connection state (ep_set_user); valgrind proves on_close frees it on
every path: local close, oversized header, peer EOF, peer reset, and ep_loop_free at SIGINT."""

from __future__ import annotations

import signal

import pytest


@pytest.mark.parametrize("mode", [[], ["--keep-alive"]], ids=["default", "keep-alive"])
def test_http_server_frees_every_connection(run_program, h, mode):
    valgrind = h.require_tool("valgrind")
    server = run_program(
        [valgrind, "-q", "--leak-check=full", "--errors-for-leak-kinds=definite",
         "--error-exitcode=99", str(h.example_path("http_server")), "0", *mode],
        listen_timeout=30,
    )
    server.allow_stderr = True  # the oversized header is reported; valgrind's findings too
    answered = h.connect(server.port, timeout=10)
    answered.sendall(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert h.recv_until_eof(answered).endswith(b"Hello, world!")
    oversized = h.connect(server.port, timeout=10)
    oversized.sendall(b"GET / HTTP/1.1\r\nX: " + b"x" * 9000)
    assert h.recv_until_eof(oversized) == b""
    h.connect(server.port).close()
    h.reset_close(h.connect(server.port))
    left_open = [h.connect(server.port) for _ in range(2)]
    left_open[0].sendall(b"GET / HTTP/1.1\r\n")  # a half-received request, still buffered
    server.wait_accepts(6, timeout=10)
    server.wait_for(h.CLOSE_RE, count=4, timeout=10)

    server.send_signal(signal.SIGINT)
    code = server.wait_exit(30)
    assert code == 0, f"valgrind found errors or leaks (exit {code})\n{server.log()}"
    assert [reason for _, reason, _ in server.closes()].count("loop_freed") == 2
    for sock in left_open:
        sock.close()
