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
USAGE = "usage: SERVER PORT [--echo|--http] [--keep-alive] [-q]"


def parse_args(argv: list[str]) -> tuple[int, bool, bool, bool]:
    """Returns (port, http_mode, keep_alive, quiet)."""
    if not argv:
        raise SystemExit(USAGE)
    port = int(argv[0])
    http_mode = keep_alive = quiet = False
    for arg in argv[1:]:
        if arg == "-q":
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
