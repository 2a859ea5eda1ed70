"""asyncio server on the Protocol API (the fast asyncio API, not streams).

    py_asyncio.py PORT [--echo | --http] [--keep-alive] [--body FILE | --sendfile FILE] [-q]

Large responses: --body writes the header and the body (held in memory) with one
transport.writelines(); --sendfile writes the header, then awaits loop.sendfile() (asyncio uses
os.sendfile; uvloop has no loop.sendfile, so there the file is read and written, as asyncio's own
fallback does), one response after the other per connection.

py_uvloop.py runs this same code on uvloop's event loop.
"""

import asyncio
import os
import resource
import signal
import sys

import bench_common
from bench_common import HTTP_MAX_REQUEST, HTTP_RESPONSE_CLOSE, HTTP_RESPONSE_KEEPALIVE, parse_args

EOL = b"\r\n\r\n"


def make_protocols(http_mode: bool, keep_alive: bool, quiet: bool, live: set):
    def peer_name(transport) -> str:
        peer = transport.get_extra_info("peername")
        return f"{peer[0]}:{peer[1]}" if peer else "?"

    class Base(asyncio.Protocol):
        __slots__ = ("transport", "reason")

        def connection_made(self, transport):
            self.transport = transport
            self.reason = "local"
            live.add(self)
            if not quiet:
                print(f"accept {id(self)} {peer_name(transport)}", flush=True)

        # Flow control, as the other servers do it: stop reading while the transport's buffer
        # is above its high-water mark (asyncio's defaults, 64 KiB / 16 KiB, are eploop's).
        def pause_writing(self):
            self.transport.pause_reading()

        def resume_writing(self):
            self.transport.resume_reading()

        def eof_received(self):
            self.reason = "peer_eof"
            return False  # close once queued output has been written

        def connection_lost(self, exc):
            live.discard(self)
            if not quiet:
                reason = self.reason if exc is None else (
                    "peer_reset" if isinstance(exc, ConnectionError) else "error")
                err = getattr(exc, "errno", 0) or 0
                print(f"close {id(self)} {reason} {err}", flush=True)

    class Echo(Base):
        __slots__ = ()

        def data_received(self, data):
            self.transport.write(data)

    class HttpKeepAlive(Base):
        __slots__ = ("partial",)

        def connection_made(self, transport):
            super().connection_made(transport)
            self.partial = b""

        def data_received(self, data):
            buf = self.partial + data if self.partial else data
            count = buf.count(EOL)
            if count:
                self.transport.write(HTTP_RESPONSE_KEEPALIVE * count)
                buf = buf[buf.rindex(EOL) + 4:]
            if len(buf) > HTTP_MAX_REQUEST:
                self.reason = "error"
                self.transport.abort()
            self.partial = buf

    class HttpLarge(Base):
        __slots__ = ("partial", "owed", "task")

        def connection_made(self, transport):
            super().connection_made(transport)
            self.partial = b""
            self.owed = 0
            self.task = None

        def data_received(self, data):
            buf = self.partial + data if self.partial else data
            count = buf.count(EOL)
            if count:
                if large.file is None:
                    for _ in range(count):
                        self.transport.writelines((large.header, large.body))
                else:
                    self.owed += count
                    if self.task is None:
                        self.task = asyncio.get_running_loop().create_task(self.send_files())
                buf = buf[buf.rindex(EOL) + 4:]
            if len(buf) > HTTP_MAX_REQUEST:
                self.reason = "error"
                self.transport.abort()
            self.partial = buf

        async def send_files(self):
            loop = asyncio.get_running_loop()
            try:
                while self.owed and not self.transport.is_closing():
                    self.transport.write(large.header)
                    try:
                        await loop.sendfile(self.transport, large.file, 0, large.length)
                    except NotImplementedError:  # uvloop: read and write, as asyncio's fallback
                        self.transport.write(os.pread(large.file.fileno(), large.length, 0))
                    self.owed -= 1
            except ConnectionError:
                pass
            finally:
                self.task = None

    class HttpClose(Base):
        __slots__ = ("partial",)

        def connection_made(self, transport):
            super().connection_made(transport)
            self.partial = b""

        def data_received(self, data):
            buf = self.partial + data if self.partial else data
            if EOL in buf:
                self.transport.write(HTTP_RESPONSE_CLOSE)
                self.transport.close()  # flushes, then closes
                return
            if len(buf) > HTTP_MAX_REQUEST:
                self.reason = "error"
                self.transport.abort()
            self.partial = buf

    class Resp(Base):
        __slots__ = ("session",)

        def connection_made(self, transport):
            super().connection_made(transport)
            self.session = bench_common.RespSession()

        def data_received(self, data):
            replies = self.session.feed(data)
            if replies:
                self.transport.writelines(replies)

    if bench_common.RESP:
        return Resp
    if not http_mode:
        return Echo
    if keep_alive and bench_common.LARGE_KIND:
        return HttpLarge
    return HttpKeepAlive if keep_alive else HttpClose


class large:
    """The large-response body (--body/--sendfile), set up by main()."""

    header = b""
    body = b""
    file = None
    length = 0


async def serve(port: int, http_mode: bool, keep_alive: bool, quiet: bool) -> None:
    loop = asyncio.get_running_loop()
    live: set = set()
    protocol = make_protocols(http_mode, keep_alive, quiet, live)
    server = await loop.create_server(protocol, "127.0.0.1", port, backlog=4096, reuse_address=True)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    stopped = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stopped.done() or stopped.set_result(None))
    await stopped
    server.close()
    for proto in list(live):
        proto.reason = "loop_freed"
        proto.transport.close()
    await asyncio.sleep(0)
    await server.wait_closed()


def main(use_uvloop: bool = False) -> int:
    port, http_mode, keep_alive, quiet = parse_args(sys.argv[1:])
    if bench_common.LARGE_KIND:
        large.file = open(bench_common.LARGE_PATH, "rb")  # noqa: SIM115 - lives as long as the server
        large.length = os.fstat(large.file.fileno()).st_size
        large.header = bench_common.large_header(large.length)
        if bench_common.LARGE_KIND == "body":
            large.body = large.file.read()
            large.file = None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if use_uvloop:
        import uvloop

        uvloop.run(serve(port, http_mode, keep_alive, quiet))
    else:
        asyncio.run(serve(port, http_mode, keep_alive, quiet))
    return 0


if __name__ == "__main__":
    sys.exit(main())
