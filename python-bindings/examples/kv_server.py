#!/usr/bin/env python3
"""A pipelined request/response server with backpressure it does not write itself.

Each request line "GET <key>\\n" is answered with "<key> <N>\\n" and an N-byte value (default
1 MiB), the value sent without a copy (``conn.send_nocopy`` of one shared bytes object).

The pattern (README, "Backpressure for request/response servers"): ``listen(auto_pause=True)``
makes each connection stop reading while its send queue is above the high-water mark and resume
below the low one. The handler parses requests until ``send`` returns False ("stop producing"),
keeps the rest of its input, and goes on from ``on_writable``. Against a client that pipelines
requests and never reads, the server holds about one read of input and one reply: memory stays
bounded. ``--no-auto-pause`` shows the difference (input piles up as fast as the client sends).

usage: kv_server.py PORT [-q] [--edge] [--no-auto-pause] [--value-size N]
Prints the event log (listening / accept / close) and, at exit, "held <bytes>": the largest
input a connection kept unparsed.
"""

from __future__ import annotations

import argparse
import io
import signal
import sys

import eploop


class KeyValue(eploop.Handler):
    def on_accept(self) -> None:
        self.pending = bytearray()  # input not parsed yet
        self.stopped = False  # send() said "stop producing": wait for on_writable
        log(f"accept {self.conn.id} {self.conn.peername[0]}:{self.conn.peername[1]}")

    def on_data(self, data: bytes) -> None:
        global held
        self.pending += data
        held = max(held, len(self.pending))
        self.serve()

    def on_writable(self) -> None:
        self.stopped = False
        self.serve()

    def serve(self) -> None:
        used = 0
        while not self.stopped:
            end = self.pending.find(b"\n", used)
            if end < 0:
                break
            line = bytes(self.pending[used:end])
            used = end + 1
            if line.startswith(b"GET "):
                self.conn.send(line[4:260] + b" %d\n" % len(VALUE))
                self.stopped = not self.conn.send_nocopy(VALUE)
        del self.pending[:used]

    def on_close(self, reason: eploop.CloseReason, errno: int) -> None:
        log(f"close {self.conn.id} {reason} {errno}")


def log(line: str) -> None:
    if not args.q:
        print(line)


parser = argparse.ArgumentParser(description="GET <key> -> a large value, with auto_pause")
parser.add_argument("port", type=int)
parser.add_argument("-q", action="store_true", help="print only the 'listening' line")
parser.add_argument("--edge", action="store_true", help="edge-triggered epoll")
parser.add_argument("--no-auto-pause", action="store_true", help="show what happens without it")
parser.add_argument("--value-size", type=int, default=1 << 20, help="bytes per value")
args = parser.parse_args()
if isinstance(sys.stdout, io.TextIOWrapper):  # (always, but for type checkers)
    sys.stdout.reconfigure(line_buffering=True)
VALUE = b"v" * args.value_size
held = 0

with eploop.Loop() as loop:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: loop.stop())
    listener = loop.listen(
        ("127.0.0.1", args.port), KeyValue, edge=args.edge, auto_pause=not args.no_auto_pause
    )
    print("listening", listener.port)
    loop.run()
print("held", held)
