"""What the Python anchor servers share: the command line and the canned HTTP responses
(byte-identical to http_common.h, used by the C anchors)."""

HTTP_BODY = b"Hello, world!"
# The seeds' response (with their fixed Date), as c-examples/http_server.c sends it.
HTTP_HEADERS = (
    b"Date: Mon, 1 Jan 1996 01:01:01 GMT\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\n"
)
HTTP_RESPONSE_KEEPALIVE = b"HTTP/1.1 200 OK\r\n" + HTTP_HEADERS + HTTP_BODY
HTTP_RESPONSE_CLOSE = b"HTTP/1.0 200 OK\r\n" + HTTP_HEADERS + HTTP_BODY
HTTP_MAX_REQUEST = 64 * 1024
USAGE = "usage: SERVER PORT [--echo|--http|--resp] [--keep-alive] [--body FILE | --sendfile FILE] [-q]"
RESP = False  # --resp (set by parse_args): a Redis-protocol key-value store, see RespSession

# Large-response mode (set by parse_args): every keep-alive response carries FILE's bytes as its
# body, held in memory (--body) or sent from the file each time (--sendfile).
LARGE_KIND = ""  # "", "body" or "sendfile"
LARGE_PATH = ""


def large_header(length: int) -> bytes:
    """The header of a large response (byte-identical to http_common.h's)."""
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: "
        + str(length).encode()
        + b"\r\n\r\n"
    )


def parse_args(argv: list[str]) -> tuple[int, bool, bool, bool]:
    """Returns (port, http_mode, keep_alive, quiet)."""
    if not argv:
        raise SystemExit(USAGE)
    global LARGE_KIND, LARGE_PATH, RESP
    port = int(argv[0])
    http_mode = keep_alive = quiet = False
    args = iter(argv[1:])
    for arg in args:
        if arg in ("--body", "--sendfile"):
            LARGE_KIND, LARGE_PATH = arg[2:], next(args, "")
            if not LARGE_PATH:
                raise SystemExit(f"{arg} needs a FILE\n{USAGE}")
        elif arg == "-q":
            quiet = True
        elif arg == "--http":
            http_mode = True
        elif arg == "--echo":
            http_mode = False
        elif arg == "--resp":
            RESP = True
        elif arg == "--keep-alive":
            keep_alive = True
        else:
            raise SystemExit(f"unknown option {arg}\n{USAGE}")
    return port, http_mode, keep_alive, quiet


# --resp: the Redis protocol, as much of it as `redis-benchmark -t set,get` uses (every command
# an array of bulk strings; CONFIG GET at its start). The store is shared by the connections.
STORE: dict = {}
OK, NIL, EMPTY_ARRAY, CRLF = b"+OK\r\n", b"$-1\r\n", b"*0\r\n", b"\r\n"


class RespSession:
    """One connection's input: feed() takes received bytes and returns the replies' parts (a
    GET's value is one part, never copied), in order. A value reaches the store with one copy
    out of the input buffer."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list:
        buf = self.buf
        buf += data
        replies: list = []
        pos = 0
        while True:
            command, end = parse_command(buf, pos)
            if command is None:
                break
            pos = end
            execute(command, replies)
        if pos:
            del buf[:pos]
        return replies


def parse_command(buf: bytearray, pos: int):
    """(arguments, end) of the command at buf[pos:], or (None, pos) while it is incomplete."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None, pos
    if buf[pos] != 0x2A:  # '*'
        raise ValueError("not a RESP array")
    count = int(buf[pos + 1:end])
    at = end + 2
    args = []
    for _ in range(count):
        end = buf.find(b"\r\n", at)
        if end < 0:
            return None, pos
        start = end + 2
        stop = start + int(buf[at + 1:end])
        if stop + 2 > len(buf):
            return None, pos
        with memoryview(buf) as view:
            args.append(view[start:stop].tobytes())
        at = stop + 2
    return args, at


def execute(args: list, replies: list) -> None:
    name = args[0].upper()
    if name == b"SET":
        STORE[args[1]] = args[2]
        replies.append(OK)
    elif name == b"GET":
        value = STORE.get(args[1])
        if value is None:
            replies.append(NIL)
        else:
            replies += (b"$%d\r\n" % len(value), value, CRLF)
    elif name == b"CONFIG":  # CONFIG GET name: the name with an empty value
        if len(args) == 3:
            replies.append(b"*2\r\n$%d\r\n%s\r\n$0\r\n\r\n" % (len(args[2]), args[2]))
        else:
            replies.append(EMPTY_ARRAY)
    elif name == b"PING":
        replies.append(b"+PONG\r\n")
    else:
        replies.append(b"-ERR unknown command\r\n")
