"""udp_echo (C): every datagram back to its sender, IPv4 and IPv6, a logged line per datagram,
a clean stop on SIGINT with the endpoint's one close."""

from __future__ import annotations

import signal
import socket

import pytest


@pytest.mark.parametrize("host,family", [("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)])
def test_echoes_datagrams_and_stops_on_sigint(run_example, h, host, family):
    server = run_example("udp_echo", "--host", host)
    with socket.socket(family, socket.SOCK_DGRAM) as client:
        client.settimeout(h.TIMEOUT)
        client.connect((host, server.port))
        for message in (b"hello", b"", bytes(range(256)) * 100):
            client.send(message)
            assert client.recv(65536) == message
        client_port = client.getsockname()[1]
    lines = server.wait_for(r"^datagram (\S+) (\d+) (\d+)$", count=3)
    assert [(m[1], int(m[2]), int(m[3])) for m in lines] == [
        (host, client_port, 5),
        (host, client_port, 0),
        (host, client_port, 25600),
    ]
    server.send_signal(signal.SIGINT)
    assert server.wait_exit() == 0, server.log()
    assert server.closes() and [c[1:] for c in server.closes()] == [("loop_freed", 0)]
    server.check_log()
