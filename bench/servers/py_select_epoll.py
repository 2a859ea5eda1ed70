"""Hand-written select.epoll server, as a careful Python programmer would write it.

    py_select_epoll.py PORT [--echo | --http] [--keep-alive] [-q]

Level-triggered; sockets are written directly and EPOLLOUT is armed only while output is
queued (the seeds instead call epoll.modify around every send). Peer EOF, resets and errors all
end in one close path.
"""

import errno
import resource
import select
import signal
import socket
import sys

from bench_common import HTTP_RESPONSE_CLOSE, HTTP_RESPONSE_KEEPALIVE, HTTP_MAX_REQUEST, parse_args

READ_SIZE = 65536
EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT


def main() -> int:
    port, http_mode, keep_alive, quiet = parse_args(sys.argv[1:])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(socket.SOMAXCONN)
    listener.setblocking(False)
    lfd = listener.fileno()
    print(f"listening {listener.getsockname()[1]}", flush=True)

    epoll = select.epoll()
    epoll.register(lfd, EPOLLIN)
    socks: dict[int, socket.socket] = {}
    pending: dict[int, bytes] = {}   # fd -> output the kernel has not taken yet
    partial: dict[int, bytes] = {}   # fd -> incomplete HTTP request
    closing: set[int] = set()        # fds to close once their output has left

    # SIGINT/SIGTERM wake epoll.poll() through a socketpair (poll() itself retries on EINTR).
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: None)
    epoll.register(wake_r.fileno(), EPOLLIN)
    wake_fd = wake_r.fileno()
    stop = False

    def close(fd: int, reason: str, err: int = 0) -> None:
        epoll.unregister(fd)
        socks.pop(fd).close()
        pending.pop(fd, None)
        partial.pop(fd, None)
        closing.discard(fd)
        if not quiet:
            print(f"close {fd} {reason} {err}", flush=True)

    def send(fd: int, sock: socket.socket, data: bytes) -> bool:
        """Writes now, queues the rest; False if the connection was closed."""
        queued = pending.get(fd)
        if queued is not None:
            pending[fd] = queued + data
            return True
        try:
            n = sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError as e:
            close(fd, "peer_reset" if isinstance(e, ConnectionError) else "error", e.errno or 0)
            return False
        if n < len(data):
            pending[fd] = data[n:]
            epoll.modify(fd, EPOLLIN | EPOLLOUT)
        return True

    def finish(fd: int, reason: str) -> None:
        if fd in pending:
            closing.add(fd)
            epoll.modify(fd, EPOLLOUT)
        else:
            close(fd, reason)

    def on_http(fd: int, sock: socket.socket, data: bytes) -> None:
        buf = partial.pop(fd, b"") + data
        count = buf.count(b"\r\n\r\n")
        if not keep_alive:
            if count:
                if send(fd, sock, HTTP_RESPONSE_CLOSE):
                    finish(fd, "local")
                return
        elif count:
            if not send(fd, sock, HTTP_RESPONSE_KEEPALIVE * count):
                return
            buf = buf[buf.rindex(b"\r\n\r\n") + 4:]
        if buf:
            if len(buf) > HTTP_MAX_REQUEST:
                close(fd, "error", errno.EMSGSIZE)
            else:
                partial[fd] = buf

    while not stop:
        try:
            events = epoll.poll()
        except InterruptedError:
            continue
        for fd, ev in events:
            if fd == wake_fd:
                stop = True
                break
            if fd == lfd:
                while True:
                    try:
                        sock, peer = listener.accept()
                    except BlockingIOError:
                        break
                    except OSError:
                        break
                    sock.setblocking(False)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    cfd = sock.fileno()
                    socks[cfd] = sock
                    epoll.register(cfd, EPOLLIN)
                    if not quiet:
                        print(f"accept {cfd} {peer[0]}:{peer[1]}", flush=True)
                continue
            sock = socks.get(fd)
            if sock is None:
                continue
            if ev & EPOLLOUT:
                data = pending[fd]
                try:
                    n = sock.send(data)
                except BlockingIOError:
                    n = 0
                except OSError as e:
                    close(fd, "peer_reset" if isinstance(e, ConnectionError) else "error", e.errno or 0)
                    continue
                if n < len(data):
                    pending[fd] = data[n:]
                    continue
                del pending[fd]
                if fd in closing:
                    close(fd, "local" if http_mode else "peer_eof")
                    continue
                epoll.modify(fd, EPOLLIN)
            if fd in closing or not ev & (EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                continue
            try:
                data = sock.recv(READ_SIZE)
            except BlockingIOError:
                continue
            except OSError as e:
                close(fd, "peer_reset" if isinstance(e, ConnectionError) else "error", e.errno or 0)
                continue
            if not data:
                finish(fd, "peer_eof")
            elif http_mode:
                on_http(fd, sock, data)
            else:
                send(fd, sock, data)

    for fd in list(socks):
        close(fd, "loop_freed")
    epoll.close()
    listener.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
