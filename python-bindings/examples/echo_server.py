#!/usr/bin/env python3
"""Echo server: seed 000 ("How epoll detect clientside close in Python?") on eploop.

The seed slept a second per poll, echoed four bytes at a time, and once telnet quit it spun
forever on empty reads: it never learned that the client had gone. Here every way a client
goes away (FIN, RST, an error) is exactly one "close <id> <reason> <errno>" line.

usage: echo_server.py PORT [-q] [--host ADDR]      (PORT 0 picks a free port)
"""

from __future__ import annotations

import argparse
import io
import signal
import sys

import eploop


class Echo(eploop.Handler):
    def on_accept(self) -> None:
        host, port = self.conn.peername[:2]
        log(f"accept {self.conn.id} {host}:{port}")

    def on_data(self, data: bytes) -> None:
        if not args.q:  # (checked here: with -q the hot path formats nothing)
            print(f"recv {self.conn.id} {len(data)} bytes")
        if not self.conn.send(data):  # the client sends faster than it reads:
            self.conn.pause_reading()  # stop reading until our queue drains

    def on_writable(self) -> None:
        self.conn.resume_reading()

    def on_close(self, reason: eploop.CloseReason, errno: int) -> None:
        log(f"close {self.conn.id} {reason} {errno}")


def log(line: str) -> None:
    if not args.q:
        print(line)


parser = argparse.ArgumentParser(description="echo every byte back; log how each client left")
parser.add_argument("port", type=int)
parser.add_argument("-q", action="store_true", help="print only the 'listening' line")
parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
args = parser.parse_args()
if isinstance(sys.stdout, io.TextIOWrapper):  # (always, but for type checkers)
    sys.stdout.reconfigure(line_buffering=True)

with eploop.Loop() as loop:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: loop.stop())
    listener = loop.listen((args.host, args.port), Echo)
    print("listening", listener.port)
    loop.run()
# Leaving the with block closed every connection still open: "close <id> loop_freed 0".
