"""Data is bytes, binary-safe (NULs intact), in order; one loop serves 1,000 clients at once."""

from __future__ import annotations

import resource
import selectors
import socket
import time

from bindings_support import TIMEOUT, Events, Recorder, connect, recv_exactly, serving
from hypothesis import given, settings
from hypothesis import strategies as st

from eploop import CloseReason

ALL_BYTES = bytes(range(256))


def test_binary_data_with_nuls_round_trips_intact() -> None:
    payload = (b"\x00" * 10 + ALL_BYTES + b"\x00\xff\x00") * 1000
    handlers: list[Recorder] = []
    events = Events()

    def factory() -> Recorder:
        handlers.append(Recorder(events, echo=True))
        return handlers[-1]

    with serving(factory) as server, connect(server.port) as client:
        client.sendall(payload)
        assert recv_exactly(client, len(payload)) == payload
    assert bytes(handlers[0].received) == payload
    assert all(type(e[2]) is bytes for e in events.of("data"))


@settings(max_examples=25, deadline=None)
@given(chunks=st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=8))
def test_any_bytes_in_any_chunks_echo_exactly(chunks: list[bytes]) -> None:
    expected = b"".join(chunks)
    with serving(lambda: Recorder(Events(), echo=True)) as server, connect(server.port) as client:
        for chunk in chunks:
            client.sendall(chunk)
        assert recv_exactly(client, len(expected)) == expected


def test_a_thousand_concurrent_clients_on_one_loop() -> None:
    clients_wanted = 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * clients_wanted + 100  # both ends live in this process
    assert hard >= needed, f"RLIMIT_NOFILE hard limit {hard} < {needed}: raise it to run this test"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    events = Events()
    try:
        with serving(lambda: Recorder(events, echo=True)) as server:
            clients = []
            try:
                for _ in range(clients_wanted):
                    clients.append(connect(server.port))
                events.wait_count("accept", clients_wanted)
                assert not events.of("close"), "a connection closed while all should be open"
                with selectors.DefaultSelector() as selector:
                    expected = {}
                    for index, client in enumerate(clients):
                        message = b"client %d\x00" % index
                        client.sendall(message)
                        client.setblocking(False)
                        selector.register(client, selectors.EVENT_READ, index)
                        expected[index] = message
                    received = {index: b"" for index in expected}
                    deadline = time.monotonic() + TIMEOUT
                    while any(len(received[i]) < len(expected[i]) for i in expected):
                        assert time.monotonic() < deadline, "echoes did not all arrive in time"
                        for key, _ in selector.select(timeout=1):
                            received[key.data] += key.fileobj.recv(4096)  # type: ignore[union-attr]
                    assert received == expected
            finally:
                for client in clients:
                    client.close()
            events.wait_count("close", clients_wanted)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    closes = events.of("close")
    assert len(closes) == clients_wanted
    assert len({c[1] for c in closes}) == clients_wanted  # one close per connection
    assert {c[2] for c in closes} == {CloseReason.PEER_EOF}


def test_order_is_kept_across_many_sends() -> None:
    count = 2000

    class Counter(Recorder):
        def on_accept(self) -> None:
            for i in range(count):
                self.conn.send(b"%06d" % i)
            self.conn.close()

    with serving(lambda: Counter(Events())) as server, connect(server.port) as client:
        data = recv_exactly(client, 6 * count + 1)
    assert data == b"".join(b"%06d" % i for i in range(count))


def test_ipv4_socketpair_style_register_of_a_connected_socket_round_trip() -> None:
    """register() works on a client socket exactly as the seeds' scripts create one."""
    import eploop

    events = Events()
    with serving(lambda: Recorder(Events(), echo=True)) as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
        with sock, eploop.Loop() as loop:

            class Client(Recorder):
                def on_data(self, data: bytes) -> None:
                    super().on_data(data)
                    if len(self.received) == 5:
                        self.conn.close()

            conn = loop.register(sock, Client(events))
            conn.send(b"\x00ab\x00c")
            loop.run()
    assert b"".join(d[2] for d in events.of("data")) == b"\x00ab\x00c"
