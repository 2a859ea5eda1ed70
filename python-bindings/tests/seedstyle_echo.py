#!/usr/bin/env python3
"""Seed 000's select.epoll echo server, made to work: the baseline for bench_echo_rate.py.

The structure is the seed's: level-triggered epoll; on EPOLLIN recv and switch the socket to
EPOLLOUT; on EPOLLOUT send and switch back to EPOLLIN. Only what made the seed unusable is
changed: no sleep(1) per poll, recv(4096) instead of recv(4), the data kept per connection,
and an empty read (or a reset) closes the connection instead of spinning.

usage: seedstyle_echo.py PORT [-q]       (prints "listening <port>"; SIGINT stops it)
"""

import select
import socket
import sys

port = int(sys.argv[1])
quiet = "-q" in sys.argv[2:]

server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", port))
server.listen(128)
server.setblocking(False)
print("listening", server.getsockname()[1], flush=True)

epoll = select.epoll()
epoll.register(server.fileno(), select.EPOLLIN)
connections = {}
pending = {}


def close(fileno):
    epoll.unregister(fileno)
    connections.pop(fileno).close()
    pending.pop(fileno, None)
    if not quiet:
        print("closed", fileno, flush=True)


try:
    while True:
        for fileno, event in epoll.poll():
            if fileno == server.fileno():
                connection, address = server.accept()
                connection.setblocking(False)
                connections[connection.fileno()] = connection
                epoll.register(connection.fileno(), select.EPOLLIN)
            elif event & select.EPOLLIN:
                try:
                    data = connections[fileno].recv(4096)
                except ConnectionError:
                    data = b""
                if not data:
                    close(fileno)
                    continue
                pending[fileno] = data
                epoll.modify(fileno, select.EPOLLOUT)
            elif event & select.EPOLLOUT:
                try:
                    sent = connections[fileno].send(pending[fileno])
                except ConnectionError:
                    close(fileno)
                    continue
                pending[fileno] = pending[fileno][sent:]
                if not pending[fileno]:
                    epoll.modify(fileno, select.EPOLLIN)
            elif event & (select.EPOLLERR | select.EPOLLHUP):
                close(fileno)
except KeyboardInterrupt:
    pass
finally:
    epoll.close()
    server.close()
