"""Each port driven the way its seed was used, and stopped the way a person stops a server."""

from __future__ import annotations

import contextlib
import http.client
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest
from bindings_support import (
    TIMEOUT,
    closes_match_accepts,
    connect,
    cpu_seconds,
    example,
    example_server,
    recv_exactly,
    reset,
)

SERVERS = ["echo_server.py", "print_server.py", "http_server.py"]
HTTP_VARIANTS = [[], ["--edge"], ["--cork"], ["--nodelay"], ["--backlog", "1"], ["--keep-alive"]]
HELLO = b"Hello, world!"


def curl() -> str:
    path = shutil.which("curl")
    assert path, "curl is not installed (CI installs it: apt-get install curl)"
    return path


def assert_clean_exit(proc, signum: int) -> dict[str, str]:
    status = proc.finish(signum)
    assert status == 0, f"exit status {status}; stderr: {proc.stderr}"
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    return closes_match_accepts(proc.lines)


# -- every server: SIGINT/SIGTERM close every connection, logged, exit 0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("name", SERVERS)
def test_a_signal_closes_every_connection_and_exits_0(name: str, signum: int) -> None:
    with example_server(name) as (proc, port):
        clients = [connect(port) for _ in range(3)]
        try:
            proc.wait_count(r"^accept ", 3)
            reasons = assert_clean_exit(proc, signum)
            for client in clients:
                assert recv_exactly(client, 1) == b""  # the server really closed its side
        finally:
            for client in clients:
                client.close()
    assert len(reasons) == 3 and set(reasons.values()) == {"loop_freed"}


def test_the_log_format() -> None:
    with example_server("echo_server.py") as (proc, port):
        with connect(port) as client:
            client.sendall(b"x")
            assert recv_exactly(client, 1) == b"x"
            peer_port = client.getsockname()[1]
        proc.wait_line(r"^close ")
        assert_clean_exit(proc, signal.SIGTERM)
    assert re.fullmatch(r"listening \d+", proc.lines[0])
    assert re.fullmatch(rf"accept \d+ 127\.0\.0\.1:{peer_port}", proc.lines[1])
    assert re.fullmatch(r"close \d+ peer_eof 0", proc.lines[-1])


def test_quiet_prints_only_the_listening_line() -> None:
    with example_server("echo_server.py", "-q") as (proc, port):
        with connect(port) as client:
            client.sendall(b"quiet")
            assert recv_exactly(client, 5) == b"quiet"
        time.sleep(0.1)
        assert_clean_exit(proc, signal.SIGINT)
    assert len(proc.lines) == 1 and proc.lines[0].startswith("listening ")


# -- seed 000: telnet sends lines, echoes come back, then "telnet> quit"


def test_echo_server_telnet_session_then_quit_is_one_close_and_no_spinning() -> None:
    with example_server("echo_server.py") as (proc, port):
        with connect(port) as telnet:
            for line in (b"123456\r\n", b"hello\x00world\r\n", b"56\r\n"):
                telnet.sendall(line)
                assert recv_exactly(telnet, len(line)) == line
        proc.wait_line(r"^close \d+ peer_eof 0$")
        before = cpu_seconds(proc.popen.pid)
        time.sleep(0.5)
        assert cpu_seconds(proc.popen.pid) - before < 0.05, "the server spins after the quit"
        lines_after_quit = len(proc.lines)
        reasons = assert_clean_exit(proc, signal.SIGINT)
    assert list(reasons.values()) == ["peer_eof"]
    assert len(proc.lines) == lines_after_quit  # nothing more happened: no endless empty reads
    assert sum(line.startswith("recv ") for line in proc.lines) >= 3


def test_echo_server_passes_the_benchmark_echo_checks() -> None:
    """What bench/checks.py asks of every echo server before measuring it, in its order: data
    then FIN is echoed in full, then closed (the bench's eploop-py rows failed this at 8948c32:
    the reply to the bytes that came with the FIN was lost, ep_send raised StaleError out of
    run() and the server died, so the next check's 50 connections got nothing)."""
    message = b"last words\x00 before FIN" * 100  # 2200 bytes
    with example_server("echo_server.py", "-q") as (proc, port):
        with connect(port) as client:
            client.sendall(message)
            client.shutdown(socket.SHUT_WR)
            received = bytearray()
            while chunk := client.recv(65536):
                received += chunk
        assert bytes(received) == message
        clients = [connect(port) for _ in range(50)]
        try:
            for round_ in range(5):
                for i, client in enumerate(clients):
                    client.sendall(b"%d:%d;" % (i, round_))
                for i, client in enumerate(clients):
                    want = b"%d:%d;" % (i, round_)
                    assert recv_exactly(client, len(want)) == want, f"connection {i}"
        finally:
            for client in clients:
                client.close()
        assert_clean_exit(proc, signal.SIGTERM)


def test_echo_server_reports_a_reset_client() -> None:
    with example_server("echo_server.py") as (proc, port):
        client = connect(port)
        client.sendall(b"bye")
        assert recv_exactly(client, 3) == b"bye"
        reset(client)
        proc.wait_line(r"^close \d+ peer_reset 104$")
        assert_clean_exit(proc, signal.SIGTERM)


def test_echo_server_survives_clients_that_flood_without_reading_then_reset() -> None:
    """Issue 10: one such client used to end the example with a traceback."""
    with example_server("echo_server.py", "-q") as (proc, port), connect(port) as other:
        for size in (4 << 20, 300_000):
            flooder = connect(port)
            sender = threading.Thread(target=flooder.sendall, args=(b"f" * size,))
            sender.start()
            sender.join(TIMEOUT)
            reset(flooder)
        time.sleep(0.1)
        assert proc.popen.poll() is None, f"the server died: {proc._stderr_now()}"
        other.sendall(b"still here?")
        assert recv_exactly(other, 11) == b"still here?"
        assert_clean_exit(proc, signal.SIGTERM)
    assert "Traceback" not in proc.stderr


def test_echo_server_keeps_a_slow_reader_bounded() -> None:
    """A client that sends a lot and reads late gets every byte back, in order."""
    payload = bytes(range(256)) * 16384  # 4 MiB
    with example_server("echo_server.py", "-q") as (proc, port):
        with connect(port) as client:
            received = bytearray()
            reader = threading.Thread(
                target=lambda: received.extend(recv_exactly(client, len(payload)))
            )
            client.sendall(payload[: len(payload) // 2])
            time.sleep(0.2)  # not reading yet: the server must pause, not buffer without bound
            reader.start()
            client.sendall(payload[len(payload) // 2 :])
            reader.join(TIMEOUT)
            assert bytes(received) == payload
        assert_clean_exit(proc, signal.SIGINT)


# -- seed 002: telnet to the print server, type lines, quit


def test_print_server_prints_what_telnet_sends() -> None:
    with example_server("print_server.py") as (proc, port):
        with connect(port) as telnet:
            telnet.sendall(b"hello\r\n")
            telnet.sendall(b"close 1 local 0\r\n")  # a client cannot forge a log line
            telnet.sendall("a\u2028close 2 local 0\r\n".encode())  # nor with a Unicode break
            telnet.sendall(b"wor")
            time.sleep(0.05)
            telnet.sendall(b"ld\r\nno newline")
            conn_id = proc.wait_line(r"^data (\d+) hello$").group(1)
            before = cpu_seconds(proc.popen.pid)
            time.sleep(0.5)  # an idle connected client: the seed spun here (EPOLLOUT)
            assert cpu_seconds(proc.popen.pid) - before < 0.05, "the server spins"
        proc.wait_line(rf"^close {conn_id} peer_eof 0$")
        assert_clean_exit(proc, signal.SIGTERM)
    data_lines = [line for line in proc.lines if line.startswith("data ")]
    assert data_lines == [
        f"data {conn_id} hello",
        f"data {conn_id} close 1 local 0",
        f"data {conn_id} a.close 2 local 0",
        f"data {conn_id} world",
        f"data {conn_id} no newline",
    ]


# -- seeds 003/004: HTTP via http.client and via curl, every variant


@pytest.mark.parametrize("flags", HTTP_VARIANTS, ids=lambda f: " ".join(f) or "default")
def test_http_server_answers_http_client(flags: list[str]) -> None:
    with example_server("http_server.py", *flags) as (proc, port):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            assert response.status == 200
            assert response.read() == HELLO
            if "--keep-alive" in flags:
                assert response.version == 11
                conn.request("GET", "/again")  # same connection
                second = conn.getresponse()
                assert second.status == 200 and second.read() == HELLO
            else:
                assert response.version == 10
        finally:
            conn.close()
        proc.wait_line(r"^close ")
        reasons = assert_clean_exit(proc, signal.SIGINT)
    accepts = [line for line in proc.lines if line.startswith("accept ")]
    assert len(accepts) == 1
    assert proc.lines.count("-" * 40) == (2 if "--keep-alive" in flags else 1)
    assert "  GET / HTTP/1.1" in proc.lines
    assert set(reasons.values()) <= {"local", "peer_eof"}


@pytest.mark.parametrize("flags", HTTP_VARIANTS, ids=lambda f: " ".join(f) or "default")
def test_http_server_answers_curl(flags: list[str]) -> None:
    with example_server("http_server.py", *flags) as (proc, port):
        url = f"http://127.0.0.1:{port}/"
        result = subprocess.run(
            [curl(), "-sS", "--max-time", "5", url, url],
            capture_output=True,
            timeout=TIMEOUT,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == HELLO * 2
        time.sleep(0.1)
        assert_clean_exit(proc, signal.SIGTERM)
    accepts = sum(line.startswith("accept ") for line in proc.lines)
    assert accepts == (1 if "--keep-alive" in flags else 2)  # curl reused the connection


def test_http_server_keep_alive_pipelined_requests_and_head() -> None:
    requests = (
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"HEAD /2 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /3 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    with example_server("http_server.py", "--keep-alive") as (proc, port):
        with connect(port) as client:
            client.sendall(requests)
            raw = b""
            while chunk := client.recv(65536):
                raw += chunk
        assert_clean_exit(proc, signal.SIGINT)
    assert raw.count(b"HTTP/1.1 200 OK") == 4
    assert raw.count(HELLO) == 3  # HEAD has no body
    assert raw.endswith(b"Connection: close\r\n\r\n" + HELLO)


def test_http_server_survives_a_client_leaving_mid_request() -> None:
    """The seeds spun (or leaked the socket) when a client left before its blank line."""
    with example_server("http_server.py") as (proc, port):
        with connect(port) as client:
            client.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n")  # no blank line: incomplete
        proc.wait_line(r"^close \d+ peer_eof 0$")
        before = cpu_seconds(proc.popen.pid)
        time.sleep(0.3)
        assert cpu_seconds(proc.popen.pid) - before < 0.05
        assert_clean_exit(proc, signal.SIGINT)


def test_http_server_bounds_the_request_header() -> None:
    with example_server("http_server.py") as (proc, port):
        with connect(port) as client:
            # The server may close before everything was written, and unread input on a
            # closing socket may turn into RST: either way, no response may come.
            with contextlib.suppress(ConnectionResetError):
                client.sendall(b"GET / HTTP/1.0\r\nX: " + b"a" * 20000)
            with contextlib.suppress(ConnectionResetError):
                assert client.recv(65536) == b""
        assert_clean_exit(proc, signal.SIGINT)
    assert "over 8192 bytes" in proc.stderr


# -- seed 001: how and when did the peer go away?


class OneShotPeer:
    """A plain-socket server for the client example: echoes one line, then FIN or RST."""

    def __init__(self, ending: str) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.ending = ending
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with self.listener:
            conn, _ = self.listener.accept()
        conn.settimeout(TIMEOUT)
        line = b""
        while not line.endswith(b"\n"):
            chunk = conn.recv(100)
            if not chunk:
                break
            line += chunk
        conn.sendall(line)
        time.sleep(0.2)
        if self.ending == "rst":
            reset(conn)
        elif self.ending == "fin":
            conn.close()
        else:  # "silence": keep the connection open, say nothing
            time.sleep(3)
            conn.close()


@pytest.mark.parametrize(
    "ending, expected_log, sentence",
    [
        ("fin", r"^close \d+ peer_eof 0$", "the peer closed the connection cleanly (FIN)"),
        ("rst", r"^close \d+ peer_reset 104$", "the peer reset the connection (RST)"),
        ("silence", r"^close \d+ timeout 110$", "the peer stayed silent past the idle timeout"),
    ],
)
def test_dead_peer_client_reports_how_and_when(
    ending: str, expected_log: str, sentence: str
) -> None:
    peer = OneShotPeer(ending)
    args = [str(peer.port)] + (["--idle-timeout", "0.5"] if ending == "silence" else [])
    with example("dead_peer_client.py", *args, stdin=subprocess.PIPE) as proc:
        assert proc.popen.stdin is not None
        proc.popen.stdin.write("ping\n")
        proc.popen.stdin.flush()
        proc.wait_line(r"^connected \d+ 127\.0\.0\.1:\d+$")
        proc.wait_line(r"^recv \d+ 5 bytes: 'ping\\n'$")
        proc.wait_line(expected_log)
        match = proc.wait_line(rf"^{re.escape(sentence)} (\d+\.\d+) s after connecting$")
        status = proc.finish()
    assert status == 0, proc.stderr
    elapsed = float(match.group(1))
    assert 0.1 < elapsed < 5


def test_dead_peer_client_sends_fin_when_stdin_ends() -> None:
    with example_server("echo_server.py") as (server, port):
        with example("dead_peer_client.py", str(port), stdin=subprocess.PIPE) as proc:
            assert proc.popen.stdin is not None
            proc.popen.stdin.write("one\ntwo\n")
            proc.popen.stdin.close()  # end of input: the client half-closes, the echo ends
            proc.wait_line(r"^recv \d+ \d+ bytes: ")
            proc.wait_line(r"^close \d+ (peer_eof|local) 0$")
            assert proc.finish() == 0, proc.stderr
        received = "".join(
            eval(line.split(": ", 1)[1]) for line in proc.lines if line.startswith("recv ")
        )
        assert received == "one\ntwo\n"
        server.wait_line(r"^close \d+ peer_eof 0$")
        assert_clean_exit(server, signal.SIGINT)


def test_dead_peer_client_sigint_exits_0() -> None:
    with example_server("echo_server.py") as (server, port):
        with example("dead_peer_client.py", str(port), stdin=subprocess.PIPE) as proc:
            proc.wait_line(r"^connected ")
            status = proc.finish(signal.SIGINT)
            assert status == 0, proc.stderr
            assert any(re.fullmatch(r"close \d+ loop_freed 0", line) for line in proc.lines)
        assert_clean_exit(server, signal.SIGINT)


# -- UDP: the echo example, and the print server's datagram side


def test_udp_echo_answers_every_datagram_and_stops_on_sigterm() -> None:
    with example_server("udp_echo.py") as (proc, port):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(TIMEOUT)
            client.connect(("127.0.0.1", port))
            for message in (b"hello", b"", bytes(range(256)) * 100):
                client.send(message)
                assert client.recv(65536) == message
            client_port = client.getsockname()[1]
        proc.wait_line(r"^datagram 127\.0\.0\.1 \d+ 25600$")
        status = proc.finish(signal.SIGTERM)
        assert status == 0, proc.stderr
    datagrams = [line for line in proc.lines if line.startswith("datagram ")]
    assert datagrams == [
        f"datagram 127.0.0.1 {client_port} 5",
        f"datagram 127.0.0.1 {client_port} 0",
        f"datagram 127.0.0.1 {client_port} 25600",
    ]
    closes = [line.split()[2:] for line in proc.lines if line.startswith("close ")]
    assert closes == [["loop_freed", "0"]]


def test_print_server_prints_datagrams_line_by_line() -> None:
    with example_server("print_server.py") as (proc, _port):
        udp_port = int(proc.wait_line(r"^udp (\d+)$").group(1))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.sendto(b"first\r\nclose 1 local 0\n", ("127.0.0.1", udp_port))
            client.sendto(b"y" * 20000, ("127.0.0.1", udp_port))  # over 16 KiB: cut, marked
            sender = f"127.0.0.1:{client.getsockname()[1]}"
            proc.wait_line(r"^datagram \S+ \(truncated\)$")
        assert_clean_exit(proc, signal.SIGTERM)
    assert [line for line in proc.lines if line.startswith("datagram ")] == [
        f"datagram {sender} first",
        f"datagram {sender} close 1 local 0",
        f"datagram {sender} {'y' * 16384}",
        f"datagram {sender} (truncated)",
    ]
