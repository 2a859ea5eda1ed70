"""What an idle connection costs the Python side: what the binding allocates for it stays
within a budget (the benchmark's idle-memory figure is this plus the library's share)."""

from __future__ import annotations

import gc
import os
import socket
import sys
import tracemalloc
from collections.abc import Callable

import eploop

CONNECTIONS = 600
# The binding's share per idle connection, measured: 313 B with CPython 3.11, 321 with 3.13
# (the Connection object 128, its handler with one attribute 80, the id and fd ints 64, the
# registry's slot ~40), 373 with 3.9 (whose handler object is larger). A bound method kept per
# connection (64 B), a ctypes id argument made eagerly (64 B) or the seldom-needed state back
# in slots of their own (40 B) breaks it.
BUDGET = 350 if sys.version_info >= (3, 11) else 410


class Echo(eploop.Handler):
    def on_data(self, data: bytes) -> None:
        self.conn.send(data)


def serve_until(loop: eploop.Loop, done: Callable[[], bool], steps: int = 2000) -> None:
    for _ in range(steps):
        if done():
            return
        loop.run_once(0.01)
    raise AssertionError("the loop did not get there in time")


def test_an_idle_connection_costs_the_binding_a_few_hundred_bytes() -> None:
    loop = eploop.Loop()
    listener = loop.listen(("127.0.0.1", 0), Echo)
    address = ("127.0.0.1", listener.port)
    clients = [socket.socket() for _ in range(CONNECTIONS)]
    try:
        # A first connection warms the loop up (step buffers, caches) outside the measurement.
        with socket.create_connection(address) as first:
            first.sendall(b"warm")
            serve_until(loop, lambda: _echoed({first}))
        serve_until(loop, lambda: loop.stats().open == 1)  # (the listener)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        for start in range(0, CONNECTIONS, 50):  # (within the listen backlog)
            for client in clients[start : start + 50]:
                client.connect(address)
                client.sendall(b"x")
            serve_until(loop, lambda: loop.stats().accepted > start + 50)
        waiting = set(clients)
        serve_until(loop, lambda: _echoed(waiting))
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        # (the package's own files: a checkout may itself live in a directory named eploop)
        package = tracemalloc.Filter(True, os.path.join(os.path.dirname(eploop.__file__), "*"))
        grown = sum(
            stat.size_diff
            for stat in after.filter_traces([package]).compare_to(
                before.filter_traces([package]), "filename"
            )
        )
        per_connection = grown / CONNECTIONS
        assert loop.stats().open == CONNECTIONS + 1
        assert 100 < per_connection <= BUDGET, f"{per_connection:.0f} B per idle connection"
    finally:
        for client in clients:
            client.close()
        loop.close()


def _echoed(waiting: set[socket.socket]) -> bool:
    """Reads the echoes that arrived; True once every client in ``waiting`` got its own."""
    for client in list(waiting):
        client.setblocking(False)
        try:
            data = client.recv(16)
        except BlockingIOError:
            continue
        assert data in (b"x", b"warm")
        waiting.discard(client)
    return not waiting
