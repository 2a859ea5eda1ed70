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
USAGE = "usage: SERVER PORT [--echo|--http] [--keep-alive] [--body FILE | --sendfile FILE] [-q]"

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
    global LARGE_KIND, LARGE_PATH
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
        elif arg == "--keep-alive":
            keep_alive = True
        else:
            raise SystemExit(f"unknown option {arg}\n{USAGE}")
    return port, http_mode, keep_alive, quiet
