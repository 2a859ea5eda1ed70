"""Client-side load for the reliability suite, run as a separate process (so the server's
figures are not mixed with the client's). Prints one JSON object per result on stdout.

  loadgen.py many     --port P --conns N --bytes B [--rst-every K]   N concurrent conns, B bytes each, then close
  loadgen.py idle     --port P --conns N                              hold N idle conns; stdin "fin"/"rst" ends them
  loadgen.py flood    --port P --seconds S                            write as fast as possible (server in SINK)
  loadgen.py pingpong --port P --peers K --rounds R [--size n]        K echo peers, R round trips each
  loadgen.py churn    --port P --seconds S --seed N                   sequential random-lifecycle conns
"""

from __future__ import annotations

import argparse
import errno
import json
import random
import selectors
import socket
import sys
import time

sys.path.insert(0, __import__("os").path.dirname(__file__))
from relharness import pattern, raise_nofile, recv_until_eof, rst_close  # noqa: E402


def open_many(port: int, n: int, deadline: float, in_flight: int = 512) -> list[socket.socket]:
    """Open n connections with non-blocking connects, at most in_flight pending at a time."""
    sel = selectors.DefaultSelector()
    done: list[socket.socket] = []
    pending = 0
    started = 0
    while len(done) < n:
        while started < n and pending < in_flight:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            rc = s.connect_ex(("127.0.0.1", port))
            if rc not in (0, errno.EINPROGRESS):
                raise OSError(rc, f"connect: {errno.errorcode.get(rc, rc)}")
            sel.register(s, selectors.EVENT_WRITE)
            pending += 1
            started += 1
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(done)} of {n} connections opened in time")
        for key, _ in sel.select(timeout=1.0):
            s = key.fileobj
            sel.unregister(s)
            pending -= 1
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, f"connect: {errno.errorcode.get(err, err)}")
            done.append(s)
    sel.close()
    return done


def send_all_nonblocking(socks: list[socket.socket], payload: bytes, deadline: float) -> None:
    sel = selectors.DefaultSelector()
    left = {}
    for s in socks:
        left[s] = memoryview(payload)
        sel.register(s, selectors.EVENT_WRITE)
    while left:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(left)} connections still sending")
        for key, _ in sel.select(timeout=1.0):
            s = key.fileobj
            n = s.send(left[s])
            left[s] = left[s][n:]
            if not len(left[s]):
                del left[s]
                sel.unregister(s)
    sel.close()


def rst(s: socket.socket) -> int:
    return rst_close(s, settle=0)


def cmd_many(a: argparse.Namespace) -> dict:
    raise_nofile(a.conns + 64)
    t0 = time.monotonic()
    deadline = t0 + a.timeout
    socks = open_many(a.port, a.conns, deadline)
    t_open = time.monotonic() - t0
    payload = b"SINK\n" + b"x" * (a.bytes - 5)
    send_all_nonblocking(socks, payload, deadline)
    ports = [s.getsockname()[1] for s in socks]
    resets = 0
    for i, s in enumerate(socks):
        if a.rst_every and i % a.rst_every == 0:
            rst(s)
            resets += 1
        else:
            s.close()
    return {"conns": len(socks), "bytes_each": a.bytes, "bytes_sent": len(socks) * a.bytes, "resets": resets,
            "open_seconds": round(t_open, 3), "seconds": round(time.monotonic() - t0, 3), "ports": ports}


def cmd_idle(a: argparse.Namespace) -> dict:
    raise_nofile(a.conns + 64)
    t0 = time.monotonic()
    socks = open_many(a.port, a.conns, t0 + a.timeout)
    print(json.dumps({"ready": len(socks), "seconds": round(time.monotonic() - t0, 3)}), flush=True)
    how = sys.stdin.readline().strip() or "fin"
    eofs = 0
    if how == "wait-eof":
        # The server closes them all (e.g. teardown): count the EOFs we see.
        deadline = time.monotonic() + a.timeout
        for s in socks:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                if s.recv(1) == b"":
                    eofs += 1
            except OSError:
                eofs += 1
            s.close()
    else:
        for s in socks:
            rst(s) if how == "rst" else s.close()
    return {"closed": len(socks), "how": how, "eofs": eofs}


def cmd_flood(a: argparse.Namespace) -> dict:
    s = socket.create_connection(("127.0.0.1", a.port), timeout=10)
    s.sendall(b"SINK\n")
    buf = b"f" * (256 * 1024)
    sent = 5
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        s.sendall(buf)
        sent += len(buf)
    s.close()
    return {"flood_bytes": sent, "seconds": a.seconds}


def cmd_pingpong(a: argparse.Namespace) -> dict:
    raise_nofile(a.peers + 64)
    deadline = time.monotonic() + a.timeout
    socks = open_many(a.port, a.peers, deadline)
    msg = b"p" * a.size
    for s in socks:
        s.setblocking(True)
        s.settimeout(10)
        s.sendall(b"ECHO\n")
        s.setblocking(False)
    sel = selectors.DefaultSelector()
    state = {}
    for s in socks:
        s.send(msg)
        state[s] = {"sent_at": time.monotonic(), "got": 0, "rounds": 0}
        sel.register(s, selectors.EVENT_READ)
    rtts = []
    while state:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(state)} ping-pong peers unfinished")
        for key, _ in sel.select(timeout=1.0):
            s = key.fileobj
            data = s.recv(65536)
            if not data:
                raise ConnectionError("server closed a ping-pong peer")
            st = state[s]
            st["got"] += len(data)
            if st["got"] >= a.size:
                rtts.append(time.monotonic() - st["sent_at"])
                st["rounds"] += 1
                st["got"] -= a.size
                if st["rounds"] >= a.rounds:
                    sel.unregister(s)
                    s.close()
                    del state[s]
                else:
                    s.send(msg)
                    st["sent_at"] = time.monotonic()
    rtts.sort()

    def pct(p: float) -> float:
        return round(rtts[min(len(rtts) - 1, int(p * len(rtts)))] * 1000, 3)

    return {"round_trips": len(rtts), "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": round(rtts[-1] * 1000, 3)}


def _read_all(s: socket.socket, limit: int | None, timeout: float) -> tuple[bytes, str]:
    return recv_until_eof(s, timeout, limit=limit)


def churn_one(port: int, rng: random.Random, tally: dict) -> None:
    """One connection with a random lifecycle; checks every byte it gets back."""
    kind = rng.choice(["echo", "write_close", "write_rst", "write_abort", "sink_fin", "sink_rst", "write_shutwr"])
    n = rng.choice([0, 1, 7, 1000, 65536, rng.randrange(1, 300_000)])
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    sent = 0

    def send(b: bytes) -> None:
        nonlocal sent
        s.sendall(b)
        sent += len(b)

    def expect(cond: bool, what: str) -> None:
        if not cond:
            tally["errors"].append(f"{kind} n={n}: {what}")

    if kind == "echo":
        payload = pattern(rng.randrange(1000), n)
        send(b"ECHO\n")
        got = b""
        # Send in pieces, reading as we go, so neither side's buffers fill.
        for i in range(0, len(payload), 65536):
            send(payload[i:i + 65536])
            want = min(i + 65536, n) - len(got)
            if want > 0:
                more, _ = _read_all(s, limit=want, timeout=20)
                got += more
        s.shutdown(socket.SHUT_WR)
        rest, how = _read_all(s, None, 20)
        got += rest
        expect(how == "eof" and got == payload, f"echo {len(got)} bytes, {how}")
        tally["received"] += len(got)
        s.close()
    elif kind in ("write_close", "write_shutwr"):
        send(b"WRITE %d\n%s\n" % (n, b"CLOSE" if kind == "write_close" else b"SHUTWR"))
        got, how = _read_all(s, None, 30)
        expect(how == "eof" and got == pattern(0, n), f"got {len(got)} of {n}, {how}")
        tally["received"] += len(got)
        s.close()
    elif kind == "write_rst":
        send(b"WRITE %d\n" % (n + 1))
        got, _ = _read_all(s, rng.randrange(1, n + 2), 20)
        expect(got == pattern(0, len(got)), "prefix mismatch")
        tally["received"] += len(got)
        rst(s)
        tally["resets"] += 1
    elif kind == "write_abort":
        send(b"WRITE %d\nABORT\n" % n)
        got, how = _read_all(s, None, 20)
        expect(got == pattern(0, len(got)) and how in ("eof", "reset"), f"prefix mismatch or {how}")
        tally["received"] += len(got)
        s.close()
    else:
        send(b"SINK\n" + b"s" * n)
        if kind == "sink_rst":
            # Bytes the server's kernel never acked are dropped by the RST: not "sent".
            sent -= rst_close(s, settle=5)
            tally["resets"] += 1
        else:
            s.close()
    tally["conns"] += 1
    tally["sent"] += sent
    tally["kinds"][kind] = tally["kinds"].get(kind, 0) + 1


def cmd_churn(a: argparse.Namespace) -> dict:
    rng = random.Random(a.seed)
    tally = {"conns": 0, "sent": 0, "received": 0, "resets": 0, "errors": [], "kinds": {}}
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        try:
            churn_one(a.port, rng, tally)
        except OSError as e:
            tally["errors"].append(f"{type(e).__name__}: {e}")
        if len(tally["errors"]) > 20:
            break
    return tally


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("many", "idle", "flood", "pingpong", "churn"):
        sp = sub.add_parser(name)
        sp.add_argument("--port", type=int, required=True)
        sp.add_argument("--timeout", type=float, default=120.0)
        if name in ("many", "idle"):
            sp.add_argument("--conns", type=int, default=1000)
        if name == "many":
            sp.add_argument("--bytes", type=int, default=1024)
            sp.add_argument("--rst-every", type=int, default=0)
        if name in ("flood", "churn"):
            sp.add_argument("--seconds", type=float, default=3.0)
        if name == "churn":
            sp.add_argument("--seed", type=int, default=1)
        if name == "pingpong":
            sp.add_argument("--peers", type=int, default=100)
            sp.add_argument("--rounds", type=int, default=50)
            sp.add_argument("--size", type=int, default=64)
    a = p.parse_args()
    result = {"many": cmd_many, "idle": cmd_idle, "flood": cmd_flood, "pingpong": cmd_pingpong,
              "churn": cmd_churn}[a.cmd](a)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
