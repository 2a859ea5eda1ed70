#!/usr/bin/env python3
"""Dead-peer client: seed 001 ("How to tell if a connection is dead in python") on eploop.

The seed's answers peek with MSG_PEEK, wrap sends in try/except, or wait for a timeout, and
none of them can tell a clean close from a reset. This client connects to PORT, sends every
line it reads on stdin, prints what comes back, and reports exactly how and when the peer went
away, as one line in the event-log format and one sentence:

  close <id> peer_eof 0       the peer closed cleanly (FIN), after everything it sent arrived
  close <id> peer_reset 104   the peer reset the connection (RST: it crashed, SO_LINGER 0...)
  close <id> timeout 110      --idle-timeout: the peer said nothing for that long
  close <id> error 110        --keepalive: the kernel's probes went unanswered

When stdin ends, the client sends FIN itself (shutdown) and keeps reading until the peer closes.
A peer that silently vanished (power cut, cable pulled) sends neither FIN nor RST: only silence
past a timeout can reveal it, which is what --idle-timeout (eploop's timer) and --keepalive
(TCP keepalive probes plus TCP_USER_TIMEOUT) are for.

usage: dead_peer_client.py PORT [--host ADDR] [-q] [--idle-timeout SECONDS] [--keepalive SECONDS]
"""

from __future__ import annotations

import argparse
import io
import signal
import socket
import sys
import time

import eploop

HOW = {
    eploop.CloseReason.PEER_EOF: "the peer closed the connection cleanly (FIN)",
    eploop.CloseReason.PEER_RESET: "the peer reset the connection (RST)",
    eploop.CloseReason.TIMEOUT: "the peer stayed silent past the idle timeout",
    eploop.CloseReason.ERROR: "the peer is unreachable or dead (socket error)",
}


class Peer(eploop.Handler):
    def on_data(self, data: bytes) -> None:
        log(f"recv {self.conn.id} {len(data)} bytes: {data.decode(errors='backslashreplace')!r}")

    def on_close(self, reason: eploop.CloseReason, errno: int) -> None:
        elapsed = time.monotonic() - connected_at
        log(f"close {self.conn.id} {reason} {errno}")
        how = HOW.get(reason, f"we ended the connection ourselves ({reason})")
        print(f"{how} {elapsed:.3f} s after connecting")
        if stdin is not None:
            stdin.close()  # nothing left to do: the loop becomes empty and run() returns


class Stdin(eploop.Handler):
    def on_data(self, data: bytes) -> None:
        peer.send(data)  # (once the peer is gone, its on_close closes us: no more on_data)

    def on_close(self, reason: eploop.CloseReason, errno: int) -> None:
        if not peer.closed:  # end of input: send FIN, then wait for the peer to close too
            peer.shutdown()


def log(line: str) -> None:
    if not args.q:
        print(line)


parser = argparse.ArgumentParser(description="report how and when the peer goes away")
parser.add_argument("port", type=int)
parser.add_argument("--host", default="127.0.0.1", help="address to connect to")
parser.add_argument("-q", action="store_true", help="print only the final sentence")
parser.add_argument("--idle-timeout", type=float, metavar="SECONDS", help="end a silent peer")
parser.add_argument("--keepalive", type=int, metavar="SECONDS", help="TCP keepalive probes")
args = parser.parse_args()
if isinstance(sys.stdout, io.TextIOWrapper):  # (always, but for type checkers)
    sys.stdout.reconfigure(line_buffering=True)

try:
    sock = socket.create_connection((args.host, args.port), timeout=10)
except OSError as exc:
    sys.exit(f"dead_peer_client: cannot connect to {args.host}:{args.port}: {exc}")
connected_at = time.monotonic()

with eploop.Loop() as loop:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: loop.stop())
    peer = loop.register(sock, Peer())  # the loop borrows our socket; we still own it
    if args.idle_timeout:
        peer.set_idle_timeout(args.idle_timeout)
    if args.keepalive:
        peer.set_keepalive(args.keepalive, args.keepalive, 3)
        peer.set_user_timeout(4 * args.keepalive)
    try:
        stdin = loop.register(sys.stdin, Stdin())
    except eploop.EploopError:  # stdin cannot be polled (e.g. /dev/null): nothing to send
        stdin = None
        peer.shutdown()
    host, port = peer.peername[:2]
    log(f"connected {peer.id} {host}:{port}")
    loop.run()
sock.close()
