#!/usr/bin/env python3
"""deadpeer_server.c in Python, on the eploop binding, written the way the README shows (no
`try` around send): sets one of eploop's dead-peer detectors on every connection it accepts,
then echoes, or keeps sending. Same options and log as the C one:

usage: deadpeer_server.py PORT [--host ADDR] [--idle-timeout MS] [--keepalive IDLE,INTVL,CNT]
                               [--user-timeout MS] [--stream] [--tick MS]
"""

import argparse
import signal
import sys

import eploop

CHUNK = bytes((k * 7 + 3) & 0xFF for k in range(64 * 1024))
open_conns = {}


class Server(eploop.Handler):
    def on_accept(self):
        conn = self.conn
        host, port = conn.peername[:2]
        print(f"accept {conn.id} {host}:{port}")
        if args.idle_timeout is not None:
            conn.set_idle_timeout(args.idle_timeout / 1000)
            print(f"set {conn.id} idle_timeout 0")
        if args.keepalive:
            conn.set_keepalive(*args.keepalive)
            print(f"set {conn.id} keepalive 0")
        if args.user_timeout is not None:
            conn.set_user_timeout(args.user_timeout / 1000)
            print(f"set {conn.id} user_timeout 0")
        open_conns[conn.id] = conn
        if args.stream:
            self.stream_more()

    def stream_more(self):
        while self.conn.send(CHUNK):  # False: stop producing until on_writable
            pass

    def on_data(self, data):
        if not args.stream:
            self.conn.send(data)

    def on_writable(self):
        if args.stream:
            self.stream_more()

    def on_close(self, reason, errno):
        open_conns.pop(self.conn.id, None)
        print(f"close {self.conn.id} {reason} {errno}")


def tick():
    for conn in list(open_conns.values()):
        conn.send(CHUNK[:4096])


parser = argparse.ArgumentParser()
parser.add_argument("port", type=int)
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--idle-timeout", type=int, metavar="MS")
parser.add_argument("--keepalive", type=lambda v: [int(x) for x in v.split(",")], metavar="I,N,C")
parser.add_argument("--user-timeout", type=int, metavar="MS")
parser.add_argument("--stream", action="store_true")
parser.add_argument("--tick", type=int, metavar="MS")
args = parser.parse_args()
sys.stdout.reconfigure(line_buffering=True)

with eploop.Loop() as loop:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: loop.stop())
    listener = loop.listen((args.host, args.port), Server)
    if args.tick:
        loop.call_later(args.tick / 1000, tick, repeat=args.tick / 1000)
    print("listening", listener.port)
    loop.run()
