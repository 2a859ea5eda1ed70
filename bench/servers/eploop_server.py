"""eploop from Python, with exactly the application logic of the other Python anchors
(py_select_epoll.py, py_asyncio.py): echo, or HTTP framed on "\\r\\n\\r\\n" with canned
responses. (python-bindings/examples/http_server.py parses headers and is measured separately
as eploop-py-example.)

    eploop_server.py PORT [--echo | --http] [--keep-alive] [--body FILE | --sendfile FILE] [-q]

Large responses: header and body (held in memory) with one send_many() (one ep_sendv: only
what the kernel does not take is copied), or the header with send() and the file with
send_file().
"""

import os
import resource
import signal
import sys

import eploop

import bench_common
from bench_common import HTTP_MAX_REQUEST, HTTP_RESPONSE_CLOSE, HTTP_RESPONSE_KEEPALIVE, parse_args

EOL = b"\r\n\r\n"


def make_handlers(quiet: bool):
    class Base(eploop.Handler):
        def on_accept(self):
            # (TCP_NODELAY: eploop sets it on accepted connections, as uvloop does)
            if not quiet:
                host, port = self.conn.peername[:2]
                print(f"accept {self.conn.id} {host}:{port}", flush=True)

        def on_writable(self):
            self.conn.resume_reading()

        def on_close(self, reason, errno):
            if not quiet:
                print(f"close {self.conn.id} {reason} {errno}", flush=True)

    class Echo(Base):
        def on_data(self, data):
            if not self.conn.send(data):
                self.conn.pause_reading()

    class HttpKeepAlive(Base):
        def __init__(self):
            self.partial = b""

        def on_data(self, data):
            buf = self.partial + data if self.partial else data
            count = buf.count(EOL)
            if count:
                if not self.respond(count):
                    self.conn.pause_reading()
                buf = buf[buf.rindex(EOL) + 4:]
            if len(buf) > HTTP_MAX_REQUEST:
                self.conn.abort()
            self.partial = buf

        def respond(self, count):
            return self.conn.send(HTTP_RESPONSE_KEEPALIVE * count)

    class HttpLarge(HttpKeepAlive):
        def respond(self, count):
            conn = self.conn
            more = True
            for _ in range(count):
                if LARGE_FD >= 0:
                    conn.send(LARGE_HEADER)
                    more = conn.send_file(LARGE_FD, 0, LARGE_LEN)
                else:
                    more = conn.send_many((LARGE_HEADER, LARGE_BODY))
            return more

    class HttpClose(Base):
        def __init__(self):
            self.partial = b""

        def on_data(self, data):
            buf = self.partial + data if self.partial else data
            if EOL in buf:
                self.conn.send(HTTP_RESPONSE_CLOSE)
                self.conn.close()
                return
            if len(buf) > HTTP_MAX_REQUEST:
                self.conn.abort()
            self.partial = buf

    class Resp(Base):
        def __init__(self):
            self.session = bench_common.RespSession()

        def on_data(self, data):
            replies = self.session.feed(data)
            if replies and not self.conn.send_many(replies):
                self.conn.pause_reading()

    if bench_common.RESP:
        return Resp, None, None
    return Echo, (HttpLarge if bench_common.LARGE_KIND else HttpKeepAlive), HttpClose


LARGE_FD, LARGE_LEN, LARGE_BODY, LARGE_HEADER = -1, 0, b"", b""


def main() -> int:
    global LARGE_FD, LARGE_LEN, LARGE_BODY, LARGE_HEADER
    port, http_mode, keep_alive, quiet = parse_args(sys.argv[1:])
    if bench_common.LARGE_KIND:
        with open(bench_common.LARGE_PATH, "rb") as f:
            LARGE_BODY = f.read()
        LARGE_LEN = len(LARGE_BODY)
        LARGE_HEADER = bench_common.large_header(LARGE_LEN)
        if bench_common.LARGE_KIND == "sendfile":
            LARGE_FD, LARGE_BODY = os.open(bench_common.LARGE_PATH, os.O_RDONLY | os.O_CLOEXEC), b""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    echo, http_keep_alive, http_close = make_handlers(quiet)
    handler = (http_keep_alive if keep_alive else http_close) if http_mode else echo
    with eploop.Loop() as loop:
        listener = loop.listen(("127.0.0.1", port), handler)
        print(f"listening {listener.port}", flush=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: loop.stop())
        loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
