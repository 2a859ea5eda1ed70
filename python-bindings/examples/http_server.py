#!/usr/bin/env python3
"""HTTP "Hello, world!" server: seeds 003/004 (examples 3-6 of "How to use Linux epoll with
Python") on eploop, one script for all four variants.

By default it does what the seeds do: read the request until a blank line ("\\n\\n" or
"\\n\\r\\n"), print it after a line of dashes, answer with the fixed HTTP/1.0 response, and
close gracefully. Unlike the seeds, it never spins on a client that left before finishing its
request, never loses a response to a slow reader, and bounds a request header to 8 KiB.

usage: http_server.py PORT [-q] [--host ADDR] [--edge] [--cork] [--nodelay] [--backlog N]
                      [--keep-alive]
  --edge        edge-triggered epoll (example 4); the behaviour is identical
  --cork        TCP_CORK around each batch of responses (example 5)
  --nodelay     TCP_NODELAY on every connection (example 6)
  --backlog N   listen backlog (default SOMAXCONN; the seeds used 1)
  --keep-alive  HTTP/1.1 persistent connections; pipelined requests are answered in order
"""

import argparse
import signal
import socket
import sys

import eploop

HEAD = b"Date: Mon, 1 Jan 1996 01:01:01 GMT\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n"
BODY = b"Hello, world!"
RESPONSE = b"HTTP/1.0 200 OK\r\n" + HEAD + b"\r\n" + BODY
MAX_HEADER = 8192
PRINTABLE = bytes(c if 32 <= c < 127 else ord(".") for c in range(256))


def header_length(buf):
    """Length of the request header through its blank line, or 0 if incomplete."""
    ends = [at + len(eol) for eol in (b"\n\n", b"\n\r\n") if (at := buf.find(eol)) >= 0]
    return min(ends, default=0)


def keep_alive_response(header):
    """The HTTP/1.1 response to one request, whether to keep the connection, the body length."""
    request_line, *fields = header.decode("latin-1").splitlines()
    is_http11 = request_line.endswith(" HTTP/1.1")
    values = {}
    for field in fields:
        name, colon, value = field.partition(":")
        if colon:
            values.setdefault(name.lower(), []).append(value)
    tokens = {t.strip().lower() for v in values.get("connection", []) for t in v.split(",")}
    keep = "close" not in tokens if is_http11 else "keep-alive" in tokens
    keep = keep and "transfer-encoding" not in values  # no chunked parser: answer, then close
    try:
        body_length = int(values.get("content-length", ["0"])[0])
    except ValueError:
        body_length = 0
    connection = b"Connection: keep-alive\r\n" if keep else b"Connection: close\r\n"
    if keep and is_http11:
        connection = b""  # persistent is HTTP/1.1's default
    body = b"" if request_line.startswith("HEAD ") else BODY
    return b"HTTP/1.1 200 OK\r\n" + HEAD + connection + b"\r\n" + body, keep, body_length


class Http(eploop.Handler):
    def on_accept(self):
        self.request = bytearray()
        self.body_left = 0  # bytes of a request body still to skip (keep-alive)
        self.closing = False
        host, port = self.conn.peername[:2]
        log(f"accept {self.conn.id} {host}:{port}")
        if args.nodelay:
            self.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_data(self, data):
        if self.closing:
            return
        self.request += data
        corked, keep = False, True
        while keep and (header := self.next_request()):
            if args.cork and not corked:
                self.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
                corked = True
            keep = self.respond(header)
        if corked:  # push the batch out, before close(): then the socket is no longer ours
            self.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
        if not keep:
            self.finish()
        elif len(self.request) >= MAX_HEADER:
            print(
                f"http_server: connection {self.conn.id}: request header over {MAX_HEADER} bytes",
                file=sys.stderr,
            )
            self.finish()

    def next_request(self):
        """The next complete request header (after skipping the previous body), or None."""
        skip = min(self.body_left, len(self.request))
        del self.request[:skip]
        self.body_left -= skip
        end = 0 if self.body_left else header_length(self.request)
        if not end:
            return None
        header = bytes(self.request[:end])
        del self.request[:end]
        return header

    def respond(self, header):
        """Print the request and queue its response; returns whether to keep the connection."""
        if not args.q:
            print("-" * 40)
            for line in header.splitlines():
                if line:
                    print("  " + line.translate(PRINTABLE).decode())
        if args.keep_alive:
            response, keep, self.body_left = keep_alive_response(header)
        else:
            response, keep = RESPONSE, False
        if not self.conn.send(response):  # a pipelining client that does not read:
            self.conn.pause_reading()  # wait for on_writable
        return keep

    def on_writable(self):
        if not self.closing:
            self.conn.resume_reading()

    def on_close(self, reason, errno):
        log(f"close {self.conn.id} {reason} {errno}")

    def finish(self):
        """Graceful close: what is queued is flushed, then FIN; on_close(LOCAL) follows."""
        self.closing = True
        self.conn.close()


def log(line):
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
args = parser.parse_args()
sys.stdout.reconfigure(line_buffering=True)

with eploop.Loop() as loop:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: loop.stop())
    listener = loop.listen((args.host, args.port), Http, backlog=args.backlog, edge=args.edge)
    print("listening", listener.port)
    loop.run()
