#!/usr/bin/env python3
"""UDP echo server on eploop: every datagram goes back to its sender, whole.

Prints "listening <port>", then one line per datagram ("datagram <host> <port> <len>",
"truncated" appended if it was cut) and per network error ("error <name>") unless -q, and
"close <id> <reason> <errno>" when the endpoint ends. SIGINT/SIGTERM stop it.

usage: udp_echo.py PORT [-q] [--host ADDR]      (PORT 0 picks a free port)
"""

from __future__ import annotations

import argparse
import io
import signal
import sys
from typing import Any

import eploop


class Echo(eploop.DatagramHandler):
    def on_datagram(self, data: bytes, addr: Any) -> None:
        if not args.q:
            cut = " truncated" if isinstance(data, eploop.TruncatedDatagram) else ""
            print(f"datagram {addr[0]} {addr[1]} {len(data)}{cut}")
        if not self.endpoint.sendto(data, addr):  # above the high-water mark:
            self.endpoint.pause_reading()  # read again once the queue drained

    def on_writable(self) -> None:
        self.endpoint.resume_reading()

    def on_error(self, exc: OSError) -> None:
        if not args.q:
            print(f"error {type(exc).__name__}")

    def on_close(self, reason: eploop.CloseReason, errno: int) -> None:
        print(f"close {self.endpoint.id} {reason} {errno}")


parser = argparse.ArgumentParser(description="UDP echo server")
parser.add_argument("port", type=int)
parser.add_argument("-q", action="store_true", help="print only the 'listening' line")
parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
args = parser.parse_args()
if isinstance(sys.stdout, io.TextIOWrapper):  # (always, but for type checkers)
    sys.stdout.reconfigure(line_buffering=True)

with eploop.Loop() as loop:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: loop.stop())
    endpoint = loop.datagram_endpoint((args.host, args.port), Echo)
    print("listening", endpoint.port)
    loop.run()
