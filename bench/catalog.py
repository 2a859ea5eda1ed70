"""What the benchmark measures: the servers (each mode's command line), the scenarios and the
behaviour checks each mode must pass first. Used by runner.py and profile_server.py."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import checks

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BUILD = ROOT / "target" / "bench"
SERVERS_DIR = BENCH / "servers"
BENCH_PY = ROOT / "target" / "bench-venv" / "bin" / "python"
EPLOOP_PY = BENCH_PY  # bench/run installs python-bindings into the bench venv (a private copy)
EPLOOP_C = ROOT / "c-examples" / "build"
EPLOOP_PY_EXAMPLES = ROOT / "python-bindings" / "examples"

REFERENCE = "c-epoll"
ECHO, HTTP_KA, HTTP_CLOSE = "echo", "http-keepalive", "http-close"
# Large responses: HTTP keep-alive, every response a 1 MiB body, from memory or from a file.
HTTP_LARGE_MEM, HTTP_LARGE_FILE = "http-large-mem", "http-large-file"
LARGE_MODES = (HTTP_LARGE_MEM, HTTP_LARGE_FILE)
LARGE_BODY = BUILD / "large-body-1MiB.bin"
LARGE_SIZE = 1 << 20
_LARGE_OPTION = {HTTP_LARGE_MEM: "--body", HTTP_LARGE_FILE: "--sendfile"}


def make_large_body() -> bytes:
    """Writes the large responses' body (a fixed pseudo-random pattern, so a misplaced chunk
    shows) where the servers read it; returns it for the checks."""
    body = random.Random(20261204).randbytes(LARGE_SIZE)
    LARGE_BODY.parent.mkdir(parents=True, exist_ok=True)
    if not LARGE_BODY.exists() or LARGE_BODY.read_bytes() != body:
        LARGE_BODY.write_bytes(body)
    checks.LARGE_BODY = body
    return body


def _large(argv_http_ka: list[str], modes: tuple[str, ...]) -> dict:
    return {mode: [*argv_http_ka[:-1], _LARGE_OPTION[mode], str(LARGE_BODY), "-q"] for mode in modes}


@dataclass
class Server:
    name: str
    language: str                 # "C" or "Python"
    commands: dict                # mode -> argv (PORT is filled in as "{port}")
    note: str = ""
    failures: dict = field(default_factory=dict)   # mode -> [problems]
    missing: str = ""


def anchor_c(binary: str, large: tuple[str, ...] = ()) -> dict:
    """An anchor's command per mode; `large`: the large-response modes it implements."""
    exe = str(BUILD / binary)
    http_ka = [exe, "{port}", "--http", "--keep-alive", "-q"]
    return {
        ECHO: [exe, "{port}", "--echo", "-q"],
        HTTP_KA: http_ka,
        HTTP_CLOSE: [exe, "{port}", "--http", "-q"],
        **_large(http_ka, large),
    }


def anchor_py(script: str, large: tuple[str, ...] = ()) -> dict:
    py, path = str(BENCH_PY), str(SERVERS_DIR / script)
    http_ka = [py, path, "{port}", "--http", "--keep-alive", "-q"]
    return {
        ECHO: [py, path, "{port}", "--echo", "-q"],
        HTTP_KA: http_ka,
        HTTP_CLOSE: [py, path, "{port}", "--http", "-q"],
        **_large(http_ka, large),
    }


def all_servers() -> list[Server]:
    ep_echo, ep_http = str(EPLOOP_C / "echo_server"), str(EPLOOP_C / "http_server")
    py_echo = str(EPLOOP_PY_EXAMPLES / "echo_server.py")
    py_http = str(EPLOOP_PY_EXAMPLES / "http_server.py")
    eploop_py = {mode: [str(EPLOOP_PY), *argv[1:]] for mode, argv in anchor_py("eploop_server.py", LARGE_MODES).items()}
    return [
        Server("eploop-c", "C", anchor_c("eploop_server", LARGE_MODES),
               "bench/servers/eploop_server.c: eploop, same application code as the anchors"),
        Server(REFERENCE, "C", anchor_c("c_epoll", LARGE_MODES), "bench/servers/c_epoll.c: hand-written epoll loop"),
        Server("libuv", "C", anchor_c("uv_server", LARGE_MODES), "bench/servers/uv_server.c"),
        Server("libevent", "C", anchor_c("event_server"), "bench/servers/event_server.c (bufferevent)"),
        Server("eploop-c-example", "C", {
            ECHO: [ep_echo, "{port}", "-q"],
            HTTP_KA: [ep_http, "{port}", "-q", "--keep-alive", "--nodelay"],
            HTTP_CLOSE: [ep_http, "{port}", "-q", "--nodelay"],
        }, "c-examples/echo_server, http_server --nodelay (parses headers: more work per request)"),
        Server("eploop-py", "Python", eploop_py,
               "bench/servers/eploop_server.py: eploop, same application code as the Python anchors"),
        Server("py-select-epoll", "Python", anchor_py("py_select_epoll.py"),
               "bench/servers/py_select_epoll.py: well-written select.epoll"),
        Server("py-seed-style", "Python", anchor_py("py_seed_style.py"),
               "bench/servers/py_seed_style.py: epoll.modify around every send"),
        Server("asyncio", "Python", anchor_py("py_asyncio.py", LARGE_MODES), "bench/servers/py_asyncio.py (Protocol API)"),
        Server("uvloop", "Python", anchor_py("py_uvloop.py", LARGE_MODES), "same Protocol code on uvloop"),
        Server("eploop-py-example", "Python", {
            ECHO: [str(EPLOOP_PY), py_echo, "{port}", "-q"],
            HTTP_KA: [str(EPLOOP_PY), py_http, "{port}", "-q", "--keep-alive", "--nodelay"],
            HTTP_CLOSE: [str(EPLOOP_PY), py_http, "{port}", "-q", "--nodelay"],
        }, "python-bindings/examples/echo_server.py, http_server.py --nodelay (parses headers)"),
    ]


@dataclass
class Scenario:
    name: str
    mode: str          # which server process serves it
    tool: str          # "loadgen" or "wrk"
    args: dict
    title: str
    large: bool = False  # 1 MiB messages: their own table, outside the geometric means


SCENARIOS = [
    Scenario("echo-1x64", ECHO, "loadgen", {"kind": "echo", "conns": 1, "size": 64}, "echo, 1 conn, 64 B"),
    Scenario("echo-50x64", ECHO, "loadgen", {"kind": "echo", "conns": 50, "size": 64}, "echo, 50 conns, 64 B"),
    Scenario("echo-1000x64", ECHO, "loadgen", {"kind": "echo", "conns": 1000, "size": 64}, "echo, 1000 conns, 64 B"),
    Scenario("echo-1x16K", ECHO, "loadgen", {"kind": "echo", "conns": 1, "size": 16384}, "echo, 1 conn, 16 KiB"),
    Scenario("echo-50x16K", ECHO, "loadgen", {"kind": "echo", "conns": 50, "size": 16384}, "echo, 50 conns, 16 KiB"),
    Scenario("echo-1000x16K", ECHO, "loadgen", {"kind": "echo", "conns": 1000, "size": 16384}, "echo, 1000 conns, 16 KiB"),
    Scenario("echo-connreq", ECHO, "loadgen", {"kind": "connreq", "conns": 50, "size": 64},
             "echo, new connection per request, 50 concurrent"),
    Scenario("echo-10x1M", ECHO, "loadgen", {"kind": "echo", "conns": 10, "size": 1 << 20},
             "echo, 10 conns, 1 MiB messages", large=True),
    Scenario("http-keepalive", HTTP_KA, "wrk", {"conns": 50, "depth": 1}, "HTTP/1.1 keep-alive, 50 conns (wrk)"),
    Scenario("http-pipelined", HTTP_KA, "wrk", {"conns": 50, "depth": 16}, "HTTP/1.1 pipelined x16, 50 conns (wrk)"),
    Scenario("http-close", HTTP_CLOSE, "wrk", {"conns": 50, "depth": 1},
             "HTTP/1.0 answer-then-close, 50 concurrent (wrk)"),
    Scenario("http-large-mem", HTTP_LARGE_MEM, "wrk", {"conns": 10, "depth": 1},
             "HTTP/1.1 keep-alive, 1 MiB body from memory, 10 conns (wrk)", large=True),
    Scenario("http-large-file", HTTP_LARGE_FILE, "wrk", {"conns": 10, "depth": 1},
             "HTTP/1.1 keep-alive, 1 MiB body from a file, 10 conns (wrk)", large=True),
]

# Deterministic figure beside the timings: user-space instructions per operation under callgrind,
# one connection (so no batching differences), instrumentation on only while the load runs.
CALLGRIND_SCENARIOS = [
    Scenario("echo-1x64", ECHO, "loadgen", {"kind": "echo", "conns": 1, "size": 64}, "echo, 1 conn, 64 B"),
    Scenario("echo-50x64", ECHO, "loadgen", {"kind": "echo", "conns": 50, "size": 64}, "echo, 50 conns, 64 B"),
    Scenario("http-keepalive-1", HTTP_KA, "wrk", {"conns": 1, "depth": 1}, "HTTP/1.1 keep-alive, 1 conn"),
]

CHECKS_FOR = {ECHO: checks.ECHO_CHECKS, HTTP_KA: checks.HTTP_KEEPALIVE_CHECKS,
              HTTP_CLOSE: checks.HTTP_CLOSE_CHECKS, HTTP_LARGE_MEM: checks.HTTP_LARGE_CHECKS,
              HTTP_LARGE_FILE: checks.HTTP_LARGE_CHECKS}
