"""tiny_echo: the README's complete echo server, at most 25 lines and still correct."""

from __future__ import annotations

import os
import signal
import threading

README_LIMIT = 25


def test_fits_in_the_readme(h):
    source = (h.ROOT / "c-examples" / "tiny_echo.c").read_text()
    assert len(source.splitlines()) <= README_LIMIT
    assert max(len(line) for line in source.splitlines()) <= 100


def test_echoes_and_stops_on_sigint(run_example, h):
    server = run_example("tiny_echo")
    clients = [h.connect(server.port) for _ in range(3)]
    for i, client in enumerate(clients):
        message = f"tiny {i}\r\n".encode()
        client.sendall(message)
        assert h.recv_exact(client, len(message)) == message
    clients[0].close()
    h.reset_close(clients[1])

    # 8 MiB while reading concurrently: exercises the pause/resume flow control.
    payload = os.urandom(8 << 20)
    sender = threading.Thread(target=clients[2].sendall, args=(payload,), daemon=True)
    sender.start()
    assert h.recv_exact(clients[2], len(payload)) == payload
    sender.join(h.TIMEOUT)
    assert not sender.is_alive()

    server.send_signal(signal.SIGINT)
    assert server.wait_exit() == 0, server.log()
    h.assert_closed_by_server(clients[2])
    assert server.lines == [f"listening {server.port}"]
