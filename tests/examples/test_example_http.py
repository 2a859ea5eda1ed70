"""http_server: the seed 003/004 examples 3-6 and the HTTP/1.1 keep-alive mode."""

from __future__ import annotations

import http.client
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

SEED_MODES = [[], ["--edge"], ["--cork"], ["--nodelay"]]
MODE_IDS = ["default", "edge", "cork", "nodelay"]
KEEP_ALIVE_MODES = [["--keep-alive"], ["--keep-alive", "--edge"], ["--keep-alive", "--cork"]]
KEEP_ALIVE_IDS = ["keep-alive", "keep-alive-edge", "keep-alive-cork"]


def http_client_get(port: int, timeout: float = 5.0) -> tuple[int, str, int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        return resp.status, resp.reason, resp.version, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def assert_seed_response(status, reason, version, headers, body) -> None:
    assert (status, reason, version) == (200, "OK", 10)
    assert headers == {
        "Date": "Mon, 1 Jan 1996 01:01:01 GMT",
        "Content-Type": "text/plain",
        "Content-Length": "13",
    }
    assert body == b"Hello, world!"


@pytest.mark.parametrize("mode", SEED_MODES, ids=MODE_IDS)
def test_raw_request_gets_seed_bytes_then_close(run_example, h, mode):
    server = run_example("http_server", *mode)
    client = h.connect(server.port)
    client.sendall(b"GET /index.html HTTP/1.0\r\nHost: localhost\r\n\r\n")
    assert h.recv_until_eof(client) == h.SEED_RESPONSE
    (conn_id,) = server.wait_accepts(1)
    assert server.wait_close(conn_id) == ("local", 0)
    # The seed's print: a dashed line, then the request (here indented by two spaces).
    lines = server.lines
    start = lines.index(h.DASHES)
    assert lines[start + 1 : start + 3] == ["  GET /index.html HTTP/1.0", "  Host: localhost"]
    client.close()


@pytest.mark.parametrize("mode", SEED_MODES, ids=MODE_IDS)
def test_http_client(run_example, h, mode):
    server = run_example("http_server", *mode)
    assert_seed_response(*http_client_get(server.port))
    (conn_id,) = server.wait_accepts(1)
    assert server.wait_close(conn_id) == ("local", 0)


@pytest.mark.parametrize("mode", SEED_MODES, ids=MODE_IDS)
def test_curl(run_example, h, mode):
    server = run_example("http_server", *mode)
    result = h.curl([f"http://127.0.0.1:{server.port}/"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == h.SEED_RESPONSE
    (conn_id,) = server.wait_accepts(1)
    assert server.wait_close(conn_id) == ("local", 0)


def test_request_in_pieces_and_lf_only_terminator(run_example, h):
    """The seed accumulates until "\\n\\n" or "\\n\\r\\n"; a request may arrive in pieces."""
    server = run_example("http_server", "--edge")
    client = h.connect(server.port)
    for piece in (b"GET / HTTP/1.0\n", b"Host: a\n", b"\n"):
        client.sendall(piece)
        time.sleep(0.05)
    assert h.recv_until_eof(client) == h.SEED_RESPONSE


@pytest.mark.parametrize("mode", [[], ["--keep-alive"]], ids=["default", "keep-alive"])
def test_oversized_request_header_is_closed(run_example, h, mode):
    server = run_example("http_server", *mode)
    server.allow_stderr = True  # "request header over 8192 bytes"
    client = h.connect(server.port)
    client.sendall(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 9000)
    assert h.recv_until_eof(client) == b""
    (conn_id,) = server.wait_accepts(1)
    assert server.wait_close(conn_id) == ("local", 0)
    assert h.DASHES not in server.lines, "an incomplete request was answered"


# With backlog 1 the kernel queues at most 2 finished handshakes and drops the rest; dropped
# clients retransmit with exponential backoff (0.2, 0.4, 0.8 ... s). Clients that connect in the
# same instant retransmit in step too, and then only ~2 get in per round: on a busy machine some
# would need minutes. So the 50 clients connect 2 ms apart, wait until all 50 are connected, and
# then send their requests at once; each gets a generous bound. The point: all are served, exactly.
BACKLOG_CLIENT_TIMEOUT = 30
BACKLOG_STAGGER = 0.002


def run_concurrent_http_clients(port: int, clients: int) -> list:
    started = time.monotonic()
    all_connected = threading.Barrier(clients, timeout=BACKLOG_CLIENT_TIMEOUT)

    def one_client(index: int):
        time.sleep(max(0.0, started + index * BACKLOG_STAGGER - time.monotonic()))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=BACKLOG_CLIENT_TIMEOUT)
        try:
            conn.connect()
            all_connected.wait()
            conn.request("GET", "/")
            resp = conn.getresponse()
            return resp.status, resp.reason, resp.version, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    with ThreadPoolExecutor(max_workers=clients) as pool:
        return list(pool.map(one_client, range(clients), timeout=2 * BACKLOG_CLIENT_TIMEOUT))


@pytest.mark.parametrize("client_kind", ["http.client", "curl"])
def test_backlog_one_with_50_concurrent_clients(run_example, h, client_kind):
    server = run_example("http_server", "--backlog", "1", "-q")
    url = f"http://127.0.0.1:{server.port}/"
    clients = 50
    if client_kind == "curl":
        curl = h.require_tool("curl")
        argv = [curl, "-s", "-S", "-i", "--max-time", str(BACKLOG_CLIENT_TIMEOUT), url]
        procs = []
        for _ in range(clients):
            procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
            time.sleep(BACKLOG_STAGGER)
        deadline = time.monotonic() + BACKLOG_CLIENT_TIMEOUT + 20
        try:
            outputs = [p.communicate(timeout=max(1, deadline - time.monotonic())) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(5)
        assert [p.returncode for p in procs] == [0] * clients, [o[1] for o in outputs]
        assert [o[0] for o in outputs] == [h.SEED_RESPONSE] * clients
    else:
        for result in run_concurrent_http_clients(server.port, clients):
            assert_seed_response(*result)


def test_backlog_one_log_lines(run_example, h):
    """Same load, with the log on: 50 accepts, 50 requests printed, 50 `close <id> local 0`."""
    server = run_example("http_server", "--backlog", "1")
    for result in run_concurrent_http_clients(server.port, 50):
        assert_seed_response(*result)
    ids = server.wait_accepts(50)
    server.wait_for(h.CLOSE_RE, count=50)
    assert sorted(server.closes()) == sorted((conn_id, "local", 0) for conn_id in ids)
    assert server.lines.count(h.DASHES) == 50


# --- keep-alive --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", KEEP_ALIVE_MODES, ids=KEEP_ALIVE_IDS)
def test_keep_alive_pipelined_then_connection_close(run_example, h, mode):
    server = run_example("http_server", *mode)
    client = h.connect(server.port)
    request = b"GET /%d HTTP/1.1\r\nHost: localhost\r\n\r\n"
    client.sendall(b"".join(request % i for i in range(3)))  # three requests in one send
    expected = len(h.KEEP_ALIVE_RESPONSE) * 3
    assert h.recv_exact(client, expected) == h.KEEP_ALIVE_RESPONSE * 3

    # Still open: a fourth request on the same connection, asking to close.
    client.sendall(b"GET /last HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert h.recv_until_eof(client) == h.KEEP_ALIVE_LAST_RESPONSE
    (conn_id,) = server.wait_accepts(1)
    assert server.wait_close(conn_id) == ("local", 0)
    requests = [line for line in server.lines if line.startswith("  GET ")]
    assert requests == ["  GET /0 HTTP/1.1", "  GET /1 HTTP/1.1", "  GET /2 HTTP/1.1",
                        "  GET /last HTTP/1.1"]


def test_keep_alive_http_client_reuses_connection(run_example, h):
    server = run_example("http_server", "--keep-alive")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        for _ in range(3):
            conn.request("GET", "/")
            resp = conn.getresponse()
            assert (resp.status, resp.version) == (200, 11)
            assert resp.getheader("Content-Length") == "13"
            assert resp.read() == b"Hello, world!"
    finally:
        conn.close()
    (conn_id,) = server.wait_accepts(1)
    assert server.wait_close(conn_id) == ("peer_eof", 0)
    assert len(server.accepts()) == 1


def test_keep_alive_curl_two_urls_one_connection(run_example, h):
    server = run_example("http_server", "--keep-alive")
    url = f"http://127.0.0.1:{server.port}/"
    result = h.curl([url, url])
    assert result.returncode == 0, result.stderr
    assert result.stdout == h.KEEP_ALIVE_RESPONSE * 2
    (conn_id,) = server.wait_accepts(1)
    server.wait_close(conn_id)
    assert len(server.accepts()) == 1


def test_keep_alive_http_1_0_and_bodies_and_head(run_example, h):
    server = run_example("http_server", "--keep-alive")
    client = h.connect(server.port)
    client.sendall(
        b"POST /form HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello=world"
        b"HEAD / HTTP/1.1\r\n\r\n"
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        b"GET / HTTP/1.0\r\n\r\n"
    )
    data = h.recv_until_eof(client)
    assert data == (
        h.KEEP_ALIVE_RESPONSE
        + h.KEEP_ALIVE_HEAD
        + b"\r\n"
        + h.KEEP_ALIVE_HEAD
        + b"Connection: keep-alive\r\n\r\nHello, world!"
        + h.KEEP_ALIVE_LAST_RESPONSE
    )
    (conn_id,) = server.wait_accepts(1)
    assert server.wait_close(conn_id) == ("local", 0)  # the log is complete up to here
    requests = [line for line in server.lines if line.startswith("  ") and "HTTP/1." in line]
    assert requests == ["  POST /form HTTP/1.1", "  HEAD / HTTP/1.1", "  GET / HTTP/1.0",
                        "  GET / HTTP/1.0"]


def test_keep_alive_client_that_never_reads(run_example, h):
    """Thousands of pipelined requests, responses unread: the server stays bounded and answers
    every one once the client reads."""
    server = run_example("http_server", "--keep-alive", "-q")
    client = h.connect(server.port, timeout=10)
    count = 20000
    requests = b"GET / HTTP/1.1\r\n\r\n" * count
    sender = threading.Thread(target=client.sendall, args=(requests,), daemon=True)
    sender.start()
    time.sleep(0.5)
    expected = len(h.KEEP_ALIVE_RESPONSE) * count
    data = h.recv_exact(client, expected)
    sender.join(10)
    assert not sender.is_alive()
    assert data == h.KEEP_ALIVE_RESPONSE * count


def test_cork_is_released_after_each_batch(run_example, h):
    """Linux holds a corked partial frame for 200 ms: were TCP_CORK left on, every answer on a
    kept-alive connection would wait that long. The typical round trip must be far quicker."""
    server = run_example("http_server", "--keep-alive", "--cork", "-q")
    client = h.connect(server.port)
    round_trips = []
    for _ in range(7):
        started = time.monotonic()
        client.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert h.recv_exact(client, len(h.KEEP_ALIVE_RESPONSE)) == h.KEEP_ALIVE_RESPONSE
        round_trips.append(time.monotonic() - started)
    median = sorted(round_trips)[len(round_trips) // 2]
    assert median < 0.15, f"round trips {round_trips}: is the socket left corked?"
    client.close()
