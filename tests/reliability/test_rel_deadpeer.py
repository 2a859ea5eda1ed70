"""Dead peers on a real network (issue 10 point 6; seed 001: "how to tell a connection is dead"
when nothing arrives — a pulled cable, not a FIN or an RST).

Each test builds two hosts in network namespaces of its own (netns.py: a veth pair, private
IPv4 /30 and ULA IPv6 addresses), starts the server in one and the peer in the other with
`ip netns exec`, lets them talk, then makes one host vanish (every packet it sends is dropped)
and checks that the other side's detector ends the connection with exactly one on_close of the
documented reason, within the configured bounds, and that the server goes on serving:

  detector                         peer state          expected on_close      bound (s)
  ep_set_idle_timeout 1.5 s        idle / streaming    timeout 110            1.5
  ep_set_keepalive 1,1,2           idle                error 110              2 .. 3
  ep_set_keepalive + user 2 s      streaming           error 110              2
  ep_set_user_timeout 2 s          streaming / tick    error 110              2

for the C server (deadpeer_server.c) and the Python one (deadpeer_server.py), neither of which
wraps a send in anything. Keepalive alone cannot end a connection whose output is in flight
(Linux suspends the probes while data is unacknowledged and retransmits for ~15 minutes):
test_keepalive_alone_waits_while_output_is_in_flight pins that down, which is why the README
pairs keepalive with TCP_USER_TIMEOUT. Finally, python-bindings/examples/dead_peer_client.py
(the seed-001 port) reports a server that vanished, with and without output queued.

Skips (with the reason printed) only where network namespaces cannot be created.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import threading
import time

import pytest

import netns
from relharness import BUILD, HERE, INCLUDE, LIBDIR, ROOT, Server, _run_gcc, _stale

ETIMEDOUT = 110
PY_ENV = {"PYTHONPATH": str(ROOT / "python-bindings")}
PEER = HERE / "deadpeer_peer.py"


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def c_server() -> str:
    """deadpeer_server.c compiled against target/release (run `make lib` first)."""
    lib, header = LIBDIR / "libeploop.so", INCLUDE / "eploop.h"
    if not lib.exists():
        pytest.fail(f"{lib} is missing: run `make lib`", pytrace=False)
    BUILD.mkdir(exist_ok=True)
    exe, src = BUILD / "deadpeer_server", HERE / "deadpeer_server.c"
    if _stale(exe, [src, lib, header]):
        _run_gcc(["gcc", "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror", "-O1", "-g",
                  f"-I{INCLUDE}", "-o", str(exe), str(src), f"-L{LIBDIR}", "-leploop",
                  f"-Wl,-rpath,{LIBDIR}"])
    return str(exe)


@pytest.fixture(params=["c", "python"])
def lang(request) -> str:
    return request.param


class Lines:
    """A child's stdout, read by a thread; each line stamped with time.monotonic() on arrival."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._eof = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append((time.monotonic(), raw.rstrip("\n")))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_for(self, pred, timeout: float, what: str) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        idx = 0
        with self._cond:
            while True:
                for t, line in self.lines[idx:]:
                    if pred(line):
                        return t, line
                idx = len(self.lines)
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    err = self.proc.stderr.read() if self._eof and self.proc.stderr else ""
                    raise AssertionError(f"no {what} within {timeout}s (exited: {self._eof}); "
                                         f"output: {[l for _, l in self.lines][-10:]}; stderr: {err[-2000:]}")
                self._cond.wait(min(left, 0.5))

    def text(self) -> list[str]:
        with self._cond:
            return [l for _, l in self.lines]


def spawn(argv: list[str], env: dict[str, str] | None = None, stdin=subprocess.DEVNULL) -> tuple[subprocess.Popen, Lines]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=stdin, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    return proc, Lines(proc)


def end(proc: subprocess.Popen) -> None:
    """Kill a process this test started, by its pid."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def start_server(net: netns.NetPair, lang: str, c_server: str, opts: list[str], family: int = 4) -> Server:
    host = net.addr("srv", family)
    if lang == "c":
        argv = [c_server, "0", "--host", host, *opts]
    else:
        argv = [sys.executable, str(HERE / "deadpeer_server.py"), "0", "--host", host, *opts]
    return Server(net.exec("srv", argv), env=PY_ENV, strict=False)


def vanish_and_time_close(net: netns.NetPair, lang: str, c_server: str, opts: list[str], mode: str,
                          expect: tuple[str, int], low: float, high: float, family: int = 4) -> float:
    """Server with opts in one host, a peer (echo|stream) in the other; the peer vanishes; the
    one close must come with `expect` between low and high seconds later. Returns the delay."""
    srv = start_server(net, lang, c_server, opts, family)
    peer = None
    try:
        peer, out = spawn(net.exec("peer", [sys.executable, str(PEER), net.addr("srv", family),
                                            str(srv.port), mode]))
        _, line = out.wait_for(lambda l: l.startswith("connected "), 10, "peer connected")
        port = int(line.split()[1])
        out.wait_for(lambda l: l == "ready", 10, "peer ready")
        srv.wait_until(lambda o: port in o.by_peer_port, 10, "accept of the peer")
        cid = srv.oracle.by_peer_port[port]
        # The server logs "set" after "accept" (the Python one in a separate line): wait for it.
        key = str(cid)
        srv.wait_until(lambda o: any(l.startswith(f"set {key} ") for l in srv.log), 10, "the detector's set line")
        sets = [l for l in srv.lines_for(cid) if l.startswith("set ")]
        assert sets and all(l.split()[3] == "0" for l in sets), f"detector not set: {sets}"

        t0 = time.monotonic()
        net.vanish("peer")
        rec = srv.wait_closed(cid, high + 5)
        delay = time.monotonic() - t0
        print(f"{lang} {' '.join(opts)} {mode}: close {rec.close_reason} {rec.close_err} after "
              f"{delay:.2f}s (bound {low}..{high}; peer dropped with {net.dropper})")
        assert (rec.close_reason, rec.close_err) == expect, \
            f"close {rec.close_reason} {rec.close_err}, expected {expect}; log: {rec.lines[-6:]}"
        assert low <= delay <= high, f"close after {delay:.2f}s, outside {low}..{high}s"

        # One channel: no send ever returned a negative code because of the peer.
        bad = [l for l in srv.lines_for(cid) if l.startswith("sendrc ")]
        assert not bad, bad
        time.sleep(0.3)  # nothing may follow the close
        assert srv.proc.poll() is None, f"server died: {srv.stderr_text()}"
        srv.finish()  # SIGTERM: exit 0; the oracle: one close per connection, nothing after it
        return delay
    finally:
        if peer is not None:
            end(peer)
        srv.kill()


# ----------------------------------------------------------------------------- the detectors


def test_idle_timeout_ends_a_silent_vanished_peer(net, lang, c_server) -> None:
    vanish_and_time_close(net, lang, c_server, ["--idle-timeout", "1500"], "echo",
                          ("timeout", ETIMEDOUT), 1.1, 2.8)


def test_idle_timeout_ends_a_vanished_peer_while_the_server_streams(net, lang, c_server) -> None:
    # The server keeps producing; once the kernel's send buffer is full nothing more is written,
    # and queued-but-unwritten bytes are not progress: the timeout runs from the last write.
    vanish_and_time_close(net, lang, c_server, ["--idle-timeout", "1500", "--stream"], "stream",
                          ("timeout", ETIMEDOUT), 1.3, 3.0)


def test_keepalive_ends_a_silent_vanished_peer(net, lang, c_server) -> None:
    # idle 1 s, then 2 probes 1 s apart: dead 3 s after the last packet heard, i.e. 2..3 s
    # after the vanish (the last answered probe may be up to 1 s old).
    vanish_and_time_close(net, lang, c_server, ["--keepalive", "1,1,2"], "echo",
                          ("error", ETIMEDOUT), 1.7, 4.3)


def test_keepalive_with_user_timeout_ends_a_vanished_peer_while_streaming(net, lang, c_server) -> None:
    vanish_and_time_close(net, lang, c_server, ["--keepalive", "1,1,2", "--user-timeout", "2000", "--stream"],
                          "stream", ("error", ETIMEDOUT), 1.7, 3.6)


def test_user_timeout_ends_a_vanished_peer_while_streaming(net, lang, c_server) -> None:
    vanish_and_time_close(net, lang, c_server, ["--user-timeout", "2000", "--stream"], "stream",
                          ("error", ETIMEDOUT), 1.7, 3.6)


def test_user_timeout_ends_a_vanished_peer_under_a_heartbeat(net, lang, c_server) -> None:
    # A server that sends 4 KiB every 100 ms whatever send() returns (ignoring flow control).
    vanish_and_time_close(net, lang, c_server, ["--user-timeout", "2000", "--tick", "100"], "echo",
                          ("error", ETIMEDOUT), 1.7, 3.8)


def test_user_timeout_over_ipv6(net, c_server) -> None:
    vanish_and_time_close(net, "c", c_server, ["--user-timeout", "2000", "--stream"], "stream",
                          ("error", ETIMEDOUT), 1.7, 3.6, family=6)


def test_keepalive_alone_waits_while_output_is_in_flight(net, c_server) -> None:
    """Linux sends no keepalive probe while data is unacknowledged (it retransmits instead, for
    tcp_retries2, ~15 min): keepalive alone does not end a streaming connection to a vanished
    peer within its bound. Documented in the README: pair it with TCP_USER_TIMEOUT."""
    srv = start_server(net, "c", c_server, ["--keepalive", "1,1,2", "--stream"])
    peer = None
    try:
        peer, out = spawn(net.exec("peer", [sys.executable, str(PEER), net.addr("srv"), str(srv.port), "stream"]))
        port = int(out.wait_for(lambda l: l.startswith("connected "), 10, "peer connected")[1].split()[1])
        out.wait_for(lambda l: l == "ready", 10, "peer ready")
        srv.wait_until(lambda o: port in o.by_peer_port, 10, "accept of the peer")
        cid = srv.oracle.by_peer_port[port]
        net.vanish("peer")
        time.sleep(4.5)  # past keepalive's own bound (3 s) with slack
        assert srv.record(cid).closes == 0, f"closed after all: {srv.record(cid).lines[-3:]}"
        srv.finish()  # SIGTERM: the connection ends once, as loop_freed
        assert (srv.record(cid).close_reason, srv.record(cid).closes) == ("loop_freed", 1)
    finally:
        if peer is not None:
            end(peer)
        srv.kill()


# ----------------------------------------------------------------------------- dead_peer_client


DEAD_PEER_CLIENT = ROOT / "python-bindings" / "examples" / "dead_peer_client.py"
ECHO = ROOT / "c-examples" / "build" / "echo_server"


@pytest.mark.parametrize("flags, send_after, expect, sentence, low, high", [
    # keepalive 1 s (probes every 1 s, 3 of them) + TCP_USER_TIMEOUT 4 s: dead 4 s after the
    # last packet heard (3..4 s after the vanish), +1 s timer granularity.
    (["--keepalive", "1"], False, ("error", ETIMEDOUT), "unreachable or dead", 2.7, 6.0),
    # A line typed after the vanish: unacknowledged output, TCP_USER_TIMEOUT 4 s from the send.
    (["--keepalive", "1"], True, ("error", ETIMEDOUT), "unreachable or dead", 3.7, 6.0),
    (["--idle-timeout", "1.5"], False, ("timeout", ETIMEDOUT), "silent past the idle timeout", 1.2, 3.0),
], ids=["keepalive-idle", "keepalive-queued-output", "idle-timeout"])
def test_dead_peer_client_reports_a_vanished_server(net, flags, send_after, expect, sentence, low, high) -> None:
    if not ECHO.exists():
        pytest.fail(f"{ECHO} is missing: run `make examples`", pytrace=False)
    srv = Server(net.exec("srv", [str(ECHO), "0", "--host", net.addr("srv")]), strict=False)
    client = None
    try:
        # stdin is a pipe the test holds open: the client waits for input instead of ending it.
        client, out = spawn(net.exec("peer", [sys.executable, str(DEAD_PEER_CLIENT), str(srv.port),
                                              "--host", net.addr("srv"), *flags]),
                            env=PY_ENV, stdin=subprocess.PIPE)
        out.wait_for(lambda l: l.startswith("connected "), 10, "client connected")
        client.stdin.write("hello\n")
        client.stdin.flush()
        out.wait_for(lambda l: l.startswith("recv ") and "hello" in l, 10, "echo of hello")

        t0 = time.monotonic()
        srv_dropper = net.vanish("srv")
        if send_after:
            time.sleep(0.2)
            t0 = time.monotonic()
            client.stdin.write("are you there?\n")
            client.stdin.flush()
        t_close, line = out.wait_for(lambda l: l.startswith("close "), high + 5, "close line")
        delay = t_close - t0
        print(f"dead_peer_client {' '.join(flags)}: {line!r} after {delay:.2f}s "
              f"(bound {low}..{high}; server dropped with {srv_dropper})")
        assert tuple(line.split()[2:4]) == (expect[0], str(expect[1])), line
        assert low <= delay <= high, f"close after {delay:.2f}s, outside {low}..{high}s"
        rc = client.wait(10)  # the loop is empty after the close: run() returns
        lines = out.text()
        assert rc == 0, (rc, lines, client.stderr.read())
        assert sum(l.startswith("close ") for l in lines) == 1, lines
        assert any(sentence in l for l in lines), lines
    finally:
        if client is not None:
            end(client)
        srv.kill()
