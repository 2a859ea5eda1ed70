"""The seed scripts' style (shared/seeds/, "How to use Linux epoll with Python"), made correct.

    py_seed_style.py PORT [--echo | --http] [--keep-alive] [-q]

Kept from the seeds: the if/elif event chain, dicts of connections/requests/responses keyed by
fd, `epoll.modify(fd, EPOLLOUT)` when a response is ready and `epoll.modify(fd, EPOLLIN)` after
it was sent (two epoll_ctl calls and an extra poll per exchange), and the HTTP/1.0 ending:
modify(fd, 0), shutdown(SHUT_RDWR), close on EPOLLHUP.
Fixed, so it passes the behaviour checks: an empty recv() closes the connection (the seeds spin
on it), and recv reads 64 KiB instead of 1 KiB (so only the modify pattern is measured).
"""

import resource
import select
import signal
import socket
import sys

from bench_common import HTTP_RESPONSE_CLOSE, HTTP_RESPONSE_KEEPALIVE, parse_args

EOL = b"\r\n\r\n"


def main() -> int:
    port, http_mode, keep_alive, quiet = parse_args(sys.argv[1:])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    serversocket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    serversocket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    serversocket.bind(("127.0.0.1", port))
    serversocket.listen(socket.SOMAXCONN)
    serversocket.setblocking(0)
    print(f"listening {serversocket.getsockname()[1]}", flush=True)

    epoll = select.epoll()
    epoll.register(serversocket.fileno(), select.EPOLLIN)
    connections: dict[int, socket.socket] = {}
    requests: dict[int, bytes] = {}
    responses: dict[int, bytes] = {}
    stop = False

    def on_signal(signum, frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    def close(fileno: int, reason: str, err: int = 0) -> None:
        epoll.unregister(fileno)
        connections.pop(fileno).close()
        requests.pop(fileno, None)
        responses.pop(fileno, None)
        if not quiet:
            print(f"close {fileno} {reason} {err}", flush=True)

    while not stop:
        try:
            events = epoll.poll(1)
        except InterruptedError:
            continue
        for fileno, event in events:
            if fileno == serversocket.fileno():
                try:
                    connection, address = serversocket.accept()
                except OSError:
                    continue
                connection.setblocking(0)
                connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                epoll.register(connection.fileno(), select.EPOLLIN)
                connections[connection.fileno()] = connection
                requests[connection.fileno()] = b""
                responses[connection.fileno()] = b""
                if not quiet:
                    print(f"accept {connection.fileno()} {address[0]}:{address[1]}", flush=True)
            elif fileno not in connections:
                continue
            elif event & select.EPOLLIN:
                try:
                    data = connections[fileno].recv(65536)
                except OSError as e:
                    close(fileno, "peer_reset", e.errno or 0)
                    continue
                if not data:
                    close(fileno, "peer_eof")
                    continue
                if not http_mode:
                    responses[fileno] = data
                    epoll.modify(fileno, select.EPOLLOUT)
                    continue
                requests[fileno] += data
                count = requests[fileno].count(EOL)
                if count:
                    if keep_alive:
                        responses[fileno] = HTTP_RESPONSE_KEEPALIVE * count
                        requests[fileno] = requests[fileno][requests[fileno].rindex(EOL) + 4:]
                    else:
                        responses[fileno] = HTTP_RESPONSE_CLOSE
                    epoll.modify(fileno, select.EPOLLOUT)
            elif event & select.EPOLLOUT:
                try:
                    byteswritten = connections[fileno].send(responses[fileno])
                except OSError as e:
                    close(fileno, "peer_reset", e.errno or 0)
                    continue
                responses[fileno] = responses[fileno][byteswritten:]
                if len(responses[fileno]) == 0:
                    if http_mode and not keep_alive:
                        epoll.modify(fileno, 0)
                        try:
                            connections[fileno].shutdown(socket.SHUT_RDWR)
                        except OSError:
                            close(fileno, "peer_reset")
                    else:
                        epoll.modify(fileno, select.EPOLLIN)
            elif event & select.EPOLLHUP:
                close(fileno, "local")

    for fileno in list(connections):
        close(fileno, "loop_freed")
    epoll.unregister(serversocket.fileno())
    epoll.close()
    serversocket.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
