"""Behaviour checks every server must pass before it is measured, so a fast wrong server can't win.

Each check returns None on success or a short description of what was wrong. Every socket
operation has a timeout; nothing here can hang.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import threading
import time

TIMEOUT = 5.0
EXPECTED_BODY = b"Hello, world!"
HTTP_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench-check\r\nAccept: */*\r\n\r\n"


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(TIMEOUT)
    return sock


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(65536, n - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _recv_until_eof(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    chunks, got = [], 0
    deadline = time.monotonic() + TIMEOUT
    while got < limit and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        got += len(chunk)
    raise TimeoutError("no EOF")


# ---------------------------------------------------------------- echo

def echo_ping_pong(port: int) -> str | None:
    with _connect(port) as s:
        for i in range(200):
            msg = bytes([(i + j) & 0xFF for j in range(64)])
            s.sendall(msg)
            got = _recv_exact(s, len(msg))
            if got != msg:
                return f"ping-pong message {i}: sent {msg[:8]!r}.. got {got[:8]!r}.. ({len(got)} bytes)"
    return None


def echo_bulk_binary(port: int) -> str | None:
    """4 MiB of random bytes (NULs included) written while reading: byte-exact echo."""
    payload = os.urandom(4 << 20)
    received = bytearray()
    with _connect(port) as s:
        def reader():
            while len(received) < len(payload):
                chunk = s.recv(262144)
                if not chunk:
                    return
                received.extend(chunk)

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        view = memoryview(payload)
        for off in range(0, len(payload), 100_003):
            s.sendall(view[off:off + 100_003])
        t.join(TIMEOUT * 2)
    if bytes(received) != payload:
        first = next((i for i, (a, b) in enumerate(zip(received, payload)) if a != b), len(received))
        return f"bulk echo differs at byte {first} (got {len(received)} of {len(payload)})"
    return None


def echo_half_close(port: int) -> str | None:
    """Data then FIN from the client: all of it echoed, then the server closes (EOF)."""
    with _connect(port) as s:
        msg = b"last words\x00 before FIN" * 100
        s.sendall(msg)
        s.shutdown(socket.SHUT_WR)
        try:
            got = _recv_until_eof(s)
        except TimeoutError:
            return "server did not close after the client's FIN"
    if got != msg:
        return f"half-close: echoed {len(got)} bytes, expected {len(msg)}"
    return None


def echo_many(port: int) -> str | None:
    socks = [_connect(port) for _ in range(50)]
    try:
        for round_ in range(5):
            for i, s in enumerate(socks):
                s.sendall(b"%d:%d;" % (i, round_))
            for i, s in enumerate(socks):
                want = b"%d:%d;" % (i, round_)
                got = _recv_exact(s, len(want))
                if got != want:
                    return f"50 connections: conn {i} got {got!r}, want {want!r}"
    finally:
        for s in socks:
            s.close()
    return None


# ---------------------------------------------------------------- http

_STATUS = re.compile(rb"HTTP/1\.[01] 200 [^\r\n]*\r\n")


def _read_response(sock: socket.socket, buf: bytearray, body: bytes = EXPECTED_BODY) -> bytes:
    """Reads one response (status, headers, Content-Length body) from sock; leftovers stay in buf.
    The body must be `body`."""
    deadline = time.monotonic() + TIMEOUT
    while b"\r\n\r\n" not in buf:
        if time.monotonic() > deadline:
            raise TimeoutError("no complete header")
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError(f"EOF inside headers after {bytes(buf[:80])!r}")
        buf.extend(chunk)
    head_end = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:head_end])
    if not _STATUS.match(head):
        raise ValueError(f"bad status line: {head[:40]!r}")
    m = re.search(rb"\r\ncontent-length:\s*(\d+)\r\n", head, re.IGNORECASE)
    if not m:
        raise ValueError("no Content-Length")
    total = head_end + int(m.group(1))
    while len(buf) < total:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("EOF inside body")
        buf.extend(chunk)
    response = bytes(buf[:total])
    del buf[:total]
    if response[head_end:] != body:
        got = response[head_end:]
        where = next((i for i, (a, b) in enumerate(zip(got, body)) if a != b), min(len(got), len(body)))
        raise ValueError(f"body differs from the expected {len(body)} bytes at offset {where} "
                         f"(got {len(got)} bytes): {got[where:where + 16]!r}")
    return response


def http_keepalive_sequential(port: int) -> str | None:
    with _connect(port) as s:
        buf = bytearray()
        for i in range(20):
            s.sendall(HTTP_REQUEST)
            try:
                _read_response(s, buf)
            except (ValueError, EOFError, TimeoutError, OSError) as e:
                return f"keep-alive request {i}: {e}"
        if buf:
            return f"extra bytes after responses: {bytes(buf[:40])!r}"
    return None


def http_pipelined(port: int) -> str | None:
    """16 requests in one write, then 16 more split at odd places: 32 responses, in order."""
    with _connect(port) as s:
        buf = bytearray()
        s.sendall(HTTP_REQUEST * 16)
        stream = HTTP_REQUEST * 16
        for off in range(0, len(stream), 37):
            s.sendall(stream[off:off + 37])
            time.sleep(0.0005)
        for i in range(32):
            try:
                _read_response(s, buf)
            except (ValueError, EOFError, TimeoutError, OSError) as e:
                return f"pipelined response {i}: {e}"
        s.settimeout(0.2)
        try:
            extra = s.recv(4096)
        except socket.timeout:
            extra = b""
        if extra or buf:
            return f"more responses than requests: {bytes(buf) + extra!r:.60}"
    return None


def http_split_request(port: int) -> str | None:
    with _connect(port) as s:
        for byte in HTTP_REQUEST:
            s.send(bytes([byte]))
            time.sleep(0.0002)
        try:
            _read_response(s, bytearray())
        except (ValueError, EOFError, TimeoutError, OSError) as e:
            return f"request sent byte by byte: {e}"
    return None


def http_close_mode(port: int) -> str | None:
    """HTTP/1.0 answer-then-close: one complete response, then EOF from the server."""
    for i in range(20):
        with _connect(port) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            try:
                data = _recv_until_eof(s)
            except TimeoutError:
                return f"connection {i}: server did not close after answering"
            except OSError as e:
                return f"connection {i}: {e}"
        buf = bytearray(data)
        try:
            _read_response(_NoSocket(), buf)
        except (ValueError, EOFError, TimeoutError) as e:
            return f"connection {i}: {e}"
        if buf:
            return f"connection {i}: extra bytes after the response"
    return None


class _NoSocket:
    def recv(self, n: int) -> bytes:
        return b""


# ---------------------------------------------------------------- large responses

LARGE_BODY = b""  # set by catalog.make_large_body() before the checks run


def http_large_pipelined(port: int) -> str | None:
    """Three pipelined requests: three complete 1 MiB responses, byte for byte, in order."""
    with _connect(port) as s:
        s.sendall(HTTP_REQUEST * 3)
        buf = bytearray()
        for i in range(3):
            try:
                _read_response(s, buf, LARGE_BODY)
            except (ValueError, EOFError, TimeoutError, OSError) as e:
                return f"response {i}: {e}"
    return None


def http_large_reset_mid_response(port: int) -> str | None:
    """A client that resets while its response is on the way; the next client is served whole."""
    s = _connect(port)
    s.sendall(HTTP_REQUEST)
    s.recv(1000)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    time.sleep(0.05)
    return http_large_pipelined(port)


ECHO_CHECKS = [echo_ping_pong, echo_bulk_binary, echo_half_close, echo_many]
HTTP_KEEPALIVE_CHECKS = [http_keepalive_sequential, http_pipelined, http_split_request]
HTTP_CLOSE_CHECKS = [http_close_mode]
HTTP_LARGE_CHECKS = [http_large_pipelined, http_large_reset_mid_response]


def run_checks(port: int, checks) -> list[str]:
    failures = []
    for check in checks:
        try:
            problem = check(port)
        except Exception as e:  # a crash of the check is a failure of the server under test
            problem = f"{type(e).__name__}: {e}"
        if problem:
            failures.append(f"{check.__name__}: {problem}")
    return failures
