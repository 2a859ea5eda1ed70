#!/usr/bin/env python3
"""HTTP "Hello, world!" server: seeds 003/004 (examples 3-6 of "How to use Linux epoll with
Python") on eploop, one script for all four variants.

By default it does what the seeds do: read the request until a blank line ("\\n\\n" or
"\\n\\r\\n"), print it after a line of dashes, answer with the fixed HTTP/1.0 response, and
close gracefully. Unlike the seeds, it never spins on a client that left before finishing its
request, never loses a response to a slow reader, and bounds a request header to 8 KiB.

usage: http_server.py PORT [-q] [--host ADDR] [--edge] [--cork] [--nodelay] [--backlog N]
                      [--keep-alive] [--root DIR]
  --edge        edge-triggered epoll (example 4); the behaviour is identical
  --cork        TCP_CORK around each batch of responses (example 5)
  --nodelay     TCP_NODELAY on every connection (example 6)
  --backlog N   listen backlog (default SOMAXCONN; the seeds used 1)
  --keep-alive  HTTP/1.1 persistent connections; pipelined requests are answered in order
  --root DIR    serve files: "GET /NAME" answers with DIR/NAME (a plain name, no "/" or "..")
                sent with conn.send_file (sendfile(2)), Content-Length from fstat; else 404
"""

from __future__ import annotations

import argparse
import io
import os
import re
import signal
import socket
import sys
from typing import BinaryIO, cast

import eploop

HEAD = b"Date: Mon, 1 Jan 1996 01:01:01 GMT\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n"
BODY = b"Hello, world!"
RESPONSE = b"HTTP/1.0 200 OK\r\n" + HEAD + b"\r\n" + BODY
# HTTP/1.1 responses by Connection header (persistence is HTTP/1.1's default) and HEAD or not
RESPONSES_11 = {
    (connection, head): b"HTTP/1.1 200 OK\r\n" + HEAD + line + b"\r\n" + (b"" if head else BODY)
    for connection, line in [
        ("default", b""),
        ("keep-alive", b"Connection: keep-alive\r\n"),
        ("close", b"Connection: close\r\n"),
    ]
    for head in (False, True)
}
MAX_HEADER = 8192
PRINTABLE = bytes(c if 32 <= c < 127 else ord(".") for c in range(256))


BLANK_LINE = re.compile(rb"\n\r?\n")  # the end of a request header: "\n\n" or "\n\r\n"
# The header fields that decide how to answer: (name, value) pairs, any case, in order.
FIELDS = re.compile(
    rb"\n(connection|transfer-encoding|content-length)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE
)


def keep_alive_response(header: bytes) -> tuple[bytes, bool, int]:
    """The HTTP/1.1 response to one request, whether to keep the connection, the body length."""
    request_line = header[: header.find(b"\n")].rstrip()
    is_http11 = request_line.endswith(b" HTTP/1.1")
    tokens: set[bytes] = set()
    chunked, body_length = False, None
    for name, value in FIELDS.findall(header):
        name = name.lower()
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
        elif name == b"transfer-encoding":
            chunked = True
        elif body_length is None:
            body_length = int(value) if value.strip().isdigit() else 0
    keep = b"close" not in tokens if is_http11 else b"keep-alive" in tokens
    keep = keep and not chunked  # no chunked parser: answer, then close
    connection = "default" if keep and is_http11 else "keep-alive" if keep else "close"
    response = RESPONSES_11[connection, request_line.startswith(b"HEAD ")]
    return response, keep, body_length or 0


class Http(eploop.Handler):
    def on_accept(self) -> None:
        self.partial = b""  # the start of a request whose header is not complete yet
        self.body_left = 0  # bytes of a request body still to skip (keep-alive)
        self.closing = False
        host, port = self.conn.peername[:2]
        log(f"accept {self.conn.id} {host}:{port}")
        if args.nodelay:
            self.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_data(self, data: bytes) -> None:
        if self.closing:
            return
        buf = self.partial + data if self.partial else data
        responses: list[bytes | BinaryIO] = []
        start, keep = 0, True
        while keep:
            if self.body_left:  # skip the previous request's body
                skipped = min(self.body_left, len(buf) - start)
                start += skipped
                self.body_left -= skipped
                if self.body_left:
                    break
            blank_line = BLANK_LINE.search(buf, start)
            if not blank_line:
                break
            end = blank_line.end()
            response, keep = self.respond(buf[start:end])
            if isinstance(response, list):  # --root: a head and maybe a file
                responses.extend(response)
            else:
                responses.append(response)
            start = end
        self.partial = buf[start:] if keep else b""
        if responses:  # one send for every request this data completed (pipelining)
            if args.cork:
                self.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            if not self.send_all(responses):  # a client that does not read:
                self.conn.pause_reading()  # wait for on_writable
            if args.cork:  # push it out, before close(): then the socket is no longer ours
                self.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
        if not keep:
            self.finish()
        elif len(self.partial) >= MAX_HEADER:
            print(
                f"http_server: connection {self.conn.id}: request header over {MAX_HEADER} bytes",
                file=sys.stderr,
            )
            self.finish()

    def send_all(self, responses: list[bytes | BinaryIO]) -> bool:
        """Send bytes and (--root) open files in order; False: stop producing."""
        if not args.root:
            return self.conn.send(b"".join(cast("list[bytes]", responses)))  # (no files)
        ok = True
        for response in responses:
            if isinstance(response, bytes):
                ok = self.conn.send(response) and ok
            else:
                with response:  # the loop sends from its own descriptor: ours closes now
                    ok = self.conn.send_file(response) and ok
        return ok

    def respond(self, header: bytes) -> tuple[bytes | list[bytes | BinaryIO], bool]:
        """Print the request; return its response and whether to keep the connection."""
        if not args.q:
            print("-" * 40)
            for line in header.splitlines():
                if line:
                    print("  " + line.translate(PRINTABLE).decode())
        if args.root:
            return self.respond_file(header)
        if not args.keep_alive:
            return RESPONSE, False
        response, keep, self.body_left = keep_alive_response(header)
        return response, keep

    def respond_file(self, header: bytes) -> tuple[list[bytes | BinaryIO], bool]:
        """--root: the head, then the file (an open file object), or a 404."""
        keep, self.body_left = False, 0
        if args.keep_alive:
            _, keep, self.body_left = keep_alive_response(header)
        connection = b"" if keep else b"Connection: close\r\n"
        method, _, rest = header.partition(b" ")
        name = rest.split(b" ", 1)[0][1:].decode("latin-1") if rest.startswith(b"/") else ""
        file: BinaryIO | None = None
        if method in (b"GET", b"HEAD") and name and "/" not in name and ".." not in name:
            try:
                # closed by send_all once queued (or just below)
                file = open(os.path.join(args.root, name), "rb")  # noqa: SIM115
                if not os.path.isfile(file.name):
                    file.close()
                    file = None
            except OSError:
                file = None
        if file is None:
            body = b"" if method == b"HEAD" else b"not found\n"
            head = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n"
            return [head + connection + b"\r\n" + body], keep
        size = os.fstat(file.fileno()).st_size
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        head += b"Content-Length: %d\r\n" % size + connection + b"\r\n"
        if method == b"HEAD" or size == 0:
            file.close()
            return [head], keep
        return [head, file], keep

    def on_writable(self) -> None:
        if not self.closing:
            self.conn.resume_reading()

    def on_close(self, reason: eploop.CloseReason, errno: int) -> None:
        log(f"close {self.conn.id} {reason} {errno}")

    def finish(self) -> None:
        """Graceful close: what is queued is flushed, then FIN; on_close(LOCAL) follows."""
        self.closing = True
        self.conn.close()


def log(line: str) -> None:
    if not args.q:
        print(line)


parser = argparse.ArgumentParser(description='answer every HTTP request with "Hello, world!"')
parser.add_argument("port", type=int)
parser.add_argument("-q", action="store_true", help="print only the 'listening' line")
parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
parser.add_argument("--edge", action="store_true", help="edge-triggered epoll (example 4)")
parser.add_argument("--cork", action="store_true", help="TCP_CORK around responses (example 5)")
parser.add_argument("--nodelay", action="store_true", help="TCP_NODELAY (example 6)")
parser.add_argument("--backlog", type=int, default=0, help="listen backlog (default SOMAXCONN)")
parser.add_argument("--keep-alive", action="store_true", help="HTTP/1.1 persistent connections")
parser.add_argument("--root", help="serve the files of this directory (GET /NAME)")
args = parser.parse_args()
if isinstance(sys.stdout, io.TextIOWrapper):  # (always, but for type checkers)
    sys.stdout.reconfigure(line_buffering=True)

with eploop.Loop() as loop:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: loop.stop())
    listener = loop.listen((args.host, args.port), Http, backlog=args.backlog, edge=args.edge)
    print("listening", listener.port)
    loop.run()
