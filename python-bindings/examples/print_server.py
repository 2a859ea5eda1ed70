#!/usr/bin/env python3
"""Print server: seed 002 ("World's simplest Python epoll example") on eploop.

The seed registered clients for EPOLLOUT as well, so its loop spun at 100% CPU as soon as
anyone connected; it wrote raw chunks to stdout (half lines, any bytes), and it never noticed a
client leaving. Here each complete line a client sends is printed as "data <id> <text>"
(control characters shown as '.', so a client cannot forge log lines), a last unterminated
line is printed when the client goes, and every departure is one "close" line.

It also listens on UDP, on the same port number where it is free (printed as "udp <port>"):
each line of a datagram is printed as "datagram <host>:<port> <text>", and a datagram longer
than 16 KiB, cut to it, is marked "(truncated)".

usage: print_server.py PORT [-q] [--host ADDR]      (PORT 0 picks a free port)
"""

from __future__ import annotations

import argparse
import io
import re
import signal
import sys
from typing import Any

import eploop

CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")  # incl. Unicode line breaks
MAX_LINE = 64 * 1024


class Printer(eploop.Handler):
    def on_accept(self) -> None:
        self.partial = b""
        host, port = self.conn.peername[:2]
        log(f"accept {self.conn.id} {host}:{port}")

    def on_data(self, data: bytes) -> None:
        *lines, self.partial = (self.partial + data).split(b"\n")
        for line in lines:
            self.show(line.removesuffix(b"\r"))
        if len(self.partial) > MAX_LINE:  # no newline in sight: print what we have
            self.show(self.partial)
            self.partial = b""

    def on_close(self, reason: eploop.CloseReason, errno: int) -> None:
        if self.partial:
            self.show(self.partial)
        log(f"close {self.conn.id} {reason} {errno}")

    def show(self, line: bytes) -> None:
        log(f"data {self.conn.id} {CONTROL.sub('.', line.decode(errors='backslashreplace'))}")


class DatagramPrinter(eploop.DatagramHandler):
    def on_datagram(self, data: bytes, addr: Any) -> None:
        sender = f"{addr[0]}:{addr[1]}"
        for line in data.removesuffix(b"\n").split(b"\n"):
            text = CONTROL.sub(".", line.removesuffix(b"\r").decode(errors="backslashreplace"))
            log(f"datagram {sender} {text}")
        if isinstance(data, eploop.TruncatedDatagram):
            log(f"datagram {sender} (truncated)")


def log(line: str) -> None:
    if not args.q:
        print(line)


parser = argparse.ArgumentParser(description="print the lines clients send")
parser.add_argument("port", type=int)
parser.add_argument("-q", action="store_true", help="print only the 'listening' line")
parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
args = parser.parse_args()
if isinstance(sys.stdout, io.TextIOWrapper):  # (always, but for type checkers)
    sys.stdout.reconfigure(line_buffering=True)

with eploop.Loop() as loop:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: loop.stop())
    listener = loop.listen((args.host, args.port), Printer)
    print("listening", listener.port)
    try:  # the TCP port's number, if no other program holds it for UDP
        udp = loop.datagram_endpoint((args.host, listener.port), DatagramPrinter)
    except eploop.EploopError:
        udp = loop.datagram_endpoint((args.host, 0), DatagramPrinter)
    udp.set_max_size(16 * 1024)
    print("udp", udp.port)
    loop.run()
