#!/usr/bin/env python3
"""The peer of the dead-peer tests, run inside its own network namespace (`ip netns exec`).

usage: deadpeer_peer.py HOST PORT echo|stream

Connects, prints "connected <local-port>", then
  echo:   sends "ping\n", reads the echo, prints "ready", and waits (reading) until killed;
  stream: reads 256 KiB of the server's stream, prints "ready", and keeps reading until killed.
The test then makes this host vanish (its packets are dropped) and watches the server.
Standard library only.
"""

import socket
import sys

host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sys.stdout.reconfigure(line_buffering=True)
sock = socket.create_connection((host, port), timeout=10)
print("connected", sock.getsockname()[1])
if mode == "echo":
    sock.sendall(b"ping\n")
    got = b""
    while len(got) < 5:
        got += sock.recv(5 - len(got))
    assert got == b"ping\n", got
else:
    got = 0
    while got < 256 * 1024:
        got += len(sock.recv(65536))
print("ready")
sock.settimeout(None)
while sock.recv(65536):  # the test kills this process by its pid
    pass
