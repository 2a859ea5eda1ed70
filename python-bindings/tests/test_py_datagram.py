"""UDP endpoints from Python, on real sockets, both trigger modes: a server written the way the
README shows (no ``try`` around ``sendto``), IPv4, IPv6 and dual stack, empty and truncated
datagrams, a connected endpoint's ICMP errors (``on_error``, the endpoint lives on), broadcast
and multicast on the loopback interface, the caller's mistakes (exceptions, nothing sent), a
raising handler (the endpoint keeps serving), and the one ``on_close``."""

from __future__ import annotations

import errno
import socket
import time
from typing import Any

import pytest

import eploop

TIMEOUT = 10.0
EDGE = pytest.mark.parametrize("edge", [False, True], ids=["level", "edge"])


class Echo(eploop.DatagramHandler):
    """The README's echo: every datagram back to its sender."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, Any]] = []
        self.errors: list[OSError] = []
        self.closes: list[tuple[eploop.CloseReason, int]] = []
        self.after_close = 0

    def on_datagram(self, data: bytes, addr: Any) -> None:
        if self.closes:
            self.after_close += 1
        self.got.append((data, addr))
        self.endpoint.sendto(data, addr)

    def on_error(self, exc: OSError) -> None:
        self.errors.append(exc)

    def on_close(self, reason: eploop.CloseReason, err: int) -> None:
        self.closes.append((reason, err))


class Recorder(Echo):
    def on_datagram(self, data: bytes, addr: Any) -> None:
        self.got.append((data, addr))


def run_until(loop: eploop.Loop, cond: Any, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        loop.run_once(0.01)


def collect(loop: eploop.Loop, client: socket.socket, want: int) -> list[bytes]:
    client.setblocking(False)
    got: list[bytes] = []

    def enough() -> bool:
        while True:
            try:
                got.append(client.recv(70000))
            except BlockingIOError:
                return len(got) >= want

    run_until(loop, enough, f"{want} echoes")
    return got


MESSAGES = [b"one", b"", b"x" * 1400, bytes(range(256)) * 200, b"last"]


@EDGE
@pytest.mark.parametrize(
    "host,client_host,family",
    [
        ("127.0.0.1", "127.0.0.1", socket.AF_INET),
        ("::1", "::1", socket.AF_INET6),
        ("", "127.0.0.1", socket.AF_INET),  # dual stack: IPv4 senders as ::ffff:a.b.c.d
    ],
    ids=["ipv4", "ipv6", "dual-stack"],
)
def test_echo(edge: bool, host: str, client_host: str, family: int) -> None:
    with eploop.Loop() as loop:
        handler = Echo()
        endpoint = loop.datagram_endpoint((host, 0), handler, edge=edge)
        assert handler.endpoint is endpoint
        with socket.socket(family, socket.SOCK_DGRAM) as client:
            client.connect((client_host, endpoint.port))
            for message in MESSAGES:
                client.send(message)
            assert collect(loop, client, len(MESSAGES)) == MESSAGES
            client_port = client.getsockname()[1]
        senders = {addr for _, addr in handler.got}
        assert len(senders) == 1
        (sender,) = senders
        assert sender[1] == client_port
        if host == "":
            assert sender[0] == "::ffff:127.0.0.1" and len(sender) == 4
        else:
            assert sender[0] == client_host
        assert all(type(data) is bytes for data, _ in handler.got)
        endpoint.close()
        run_until(loop, lambda: handler.closes, "on_close")
    assert handler.closes == [(eploop.CloseReason.LOCAL, 0)]
    assert handler.after_close == 0


def test_truncated_datagrams_are_marked_not_silently_cut() -> None:
    with eploop.Loop() as loop:
        handler = Recorder()
        endpoint = loop.datagram_endpoint(("127.0.0.1", 0), handler, max_size=10)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.sendto(b"a" * 100, ("127.0.0.1", endpoint.port))
            client.sendto(b"b" * 10, ("127.0.0.1", endpoint.port))
            run_until(loop, lambda: len(handler.got) == 2, "two datagrams")
    (first, _), (second, _) = handler.got
    assert isinstance(first, eploop.TruncatedDatagram) and first == b"a" * 10
    assert type(second) is bytes and second == b"b" * 10


@EDGE
def test_connected_endpoint_reports_refused_and_lives_on(edge: bool) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
        gone.bind(("127.0.0.1", 0))
        closed_port = gone.getsockname()[1]
    with eploop.Loop() as loop:
        handler = Recorder()
        endpoint = loop.datagram_endpoint(
            ("127.0.0.1", 0), handler, connect=("127.0.0.1", closed_port), edge=edge
        )
        deadline = time.monotonic() + TIMEOUT
        while not handler.errors:
            assert time.monotonic() < deadline, "no on_error"
            assert endpoint.sendto(b"ping") is True  # never raises because of the network
            loop.run_once(0.02)
        assert isinstance(handler.errors[0], ConnectionRefusedError)
        assert handler.errors[0].errno == errno.ECONNREFUSED
        assert not handler.closes and not endpoint.closed
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(("127.0.0.1", closed_port))
            peer.settimeout(TIMEOUT)
            assert endpoint.sendto(b"again")
            assert peer.recv(100) == b"again"
            peer.sendto(b"answer", ("127.0.0.1", endpoint.port))
            run_until(loop, lambda: handler.got, "the connected peer's datagram")
    assert handler.got[0][0] == b"answer"
    assert handler.closes == [(eploop.CloseReason.LOOP_FREED, 0)]


def test_the_callers_mistakes_raise_and_send_nothing() -> None:
    with eploop.Loop() as loop:
        receiver = Recorder()
        target = loop.datagram_endpoint(("127.0.0.1", 0), receiver)
        to = ("127.0.0.1", target.port)
        sender = loop.datagram_endpoint(("127.0.0.1", 0), Recorder())
        with pytest.raises(eploop.EploopError) as info:
            sender.sendto(b"x" * 65508, to)
        assert info.value.errno == errno.EMSGSIZE
        with pytest.raises(eploop.EploopError) as info:
            sender.sendto(b"x")  # not connected, no address
        assert info.value.errno == errno.EDESTADDRREQ
        with pytest.raises(ValueError):
            sender.sendto(b"x", ("example.invalid", 9))  # a name lookup would block
        with pytest.raises(TypeError):
            sender.sendto(b"x", "127.0.0.1")
        with pytest.raises(PermissionError):
            sender.sendto(b"x", ("127.255.255.255", target.port))  # no set_broadcast(True)
        with pytest.raises(eploop.EploopError) as info:
            sender.join_group("10.1.2.3")  # not a multicast group
        assert info.value.errno == errno.EINVAL
        with pytest.raises(eploop.EploopError):
            sender.set_max_size(0)
        with pytest.raises(TypeError):
            loop.datagram_endpoint(("127.0.0.1", 0), object())
        with pytest.raises(eploop.EploopError) as info:
            loop.datagram_endpoint(("127.0.0.1", target.port), Recorder())
        assert info.value.errno == errno.EADDRINUSE
        assert sender.sendto(memoryview(b"only this"), to) is True
        run_until(loop, lambda: receiver.got, "the one datagram")
        time.sleep(0.05)
        loop.run_once(0)
        assert [data for data, _ in receiver.got] == [b"only this"]
        sender.close()
        with pytest.raises(eploop.ClosingError):
            sender.sendto(b"x", to)
        sender.close()  # idempotent
        run_until(loop, lambda: sender.closed, "the sender's on_close")
        with pytest.raises(eploop.StaleError):
            sender.sendto(b"x", to)


@EDGE
def test_a_raising_handler_does_not_end_the_endpoint(edge: bool) -> None:
    class Flaky(Recorder):
        def on_datagram(self, data: bytes, addr: Any) -> None:
            super().on_datagram(data, addr)
            if data == b"boom":
                raise RuntimeError("a bug in on_datagram")

    contexts: list[dict[str, Any]] = []
    with eploop.Loop() as loop:
        loop.set_exception_handler(lambda _loop, context: contexts.append(context))
        handler = Flaky()
        endpoint = loop.datagram_endpoint(("127.0.0.1", 0), handler, edge=edge)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            for data in (b"boom", b"after"):
                client.sendto(data, ("127.0.0.1", endpoint.port))
            run_until(loop, lambda: len(handler.got) == 2, "both datagrams")
        assert not handler.closes
    assert [type(c["exception"]) for c in contexts] == [RuntimeError]
    assert "on_datagram" in contexts[0]["message"]
    assert handler.closes == [(eploop.CloseReason.LOOP_FREED, 0)]


def test_broadcast_after_set_broadcast() -> None:
    with eploop.Loop() as loop:
        receiver = Recorder()
        target = loop.datagram_endpoint(("0.0.0.0", 0), receiver)
        sender = loop.datagram_endpoint(("127.0.0.1", 0), Recorder)  # a class: instantiated
        assert isinstance(sender.handler, Recorder) and sender.handler.endpoint is sender
        sender.set_broadcast(True)
        assert sender.sendto(b"to all", ("127.255.255.255", target.port))
        run_until(loop, lambda: receiver.got, "the broadcast")
    assert receiver.got[0][0] == b"to all"


def test_multicast_join_and_leave_on_loopback() -> None:
    group = "239.255.42.98"
    with eploop.Loop() as loop:
        member = Recorder()
        listening = loop.datagram_endpoint(("0.0.0.0", 0), member, reuse_port=True)
        listening.join_group(group, "127.0.0.1")
        sender = loop.datagram_endpoint(("127.0.0.1", 0), Recorder())
        sender.set_multicast_interface("lo")
        sender.set_multicast_loop(True)
        sender.set_multicast_ttl(0)
        assert sender.sendto(b"to the group", (group, listening.port))
        run_until(loop, lambda: member.got, "the group's datagram")
        listening.leave_group(group, "127.0.0.1")
        assert sender.sendto(b"after leaving", (group, listening.port))
        until = time.monotonic() + 0.3
        run_until(loop, lambda: time.monotonic() > until, "a quiet moment")
    assert [data for data, _ in member.got] == [b"to the group"]


@EDGE
def test_pause_keeps_datagrams_in_the_kernel_until_resume(edge: bool) -> None:
    with eploop.Loop() as loop:
        handler = Recorder()
        endpoint = loop.datagram_endpoint(("127.0.0.1", 0), handler, edge=edge)
        endpoint.pause_reading()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.sendto(b"held", ("127.0.0.1", endpoint.port))
            until = time.monotonic() + 0.1
            run_until(loop, lambda: time.monotonic() > until, "a while")
            assert handler.got == []
            endpoint.resume_reading()
            run_until(loop, lambda: handler.got, "the held datagram")
    assert handler.got[0][0] == b"held"


def test_loop_close_ends_endpoints_once_and_run_returns_after_drain() -> None:
    loop = eploop.Loop()
    handler = Recorder()
    loop.datagram_endpoint(("127.0.0.1", 0), handler)
    loop.drain(0.05)  # endpoints close at the end of the grace period
    assert loop.run() == eploop.RunResult.EMPTY
    assert handler.closes == [(eploop.CloseReason.LOCAL, 0)]
    loop.close()
    assert handler.closes == [(eploop.CloseReason.LOCAL, 0)]
