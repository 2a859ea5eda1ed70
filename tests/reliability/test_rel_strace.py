"""Syscall hygiene under strace: every socket write is send*/sendmsg with MSG_NOSIGNAL (never
write/writev), accepted fds are CLOEXEC and non-blocking, every fd the library creates is
CLOEXEC, and an idle loop does not storm epoll_wait."""

from __future__ import annotations

import re
import shutil
import time

import pytest

from relharness import connect, recv_until_eof, rst_close

TRACED = "sendto,sendmsg,write,writev,accept,accept4,socket,epoll_create,epoll_create1,epoll_wait,epoll_pwait," \
         "epoll_pwait2,eventfd,eventfd2,pipe,pipe2,timerfd_create,dup,dup2,dup3,fcntl"
LINE = re.compile(r"^(?:\d+\s+)?(?P<ts>\d+\.\d+)\s+(?P<call>\w+)\((?P<args>.*)$")


def parse(path) -> list[tuple[float, str, str]]:
    out = []
    for raw in open(path, errors="replace"):
        m = LINE.match(raw.strip())
        if m:
            out.append((float(m.group("ts")), m.group("call"), m.group("args")))
    return out


def is_tcp(args: str) -> bool:
    return bool(re.match(r"\d+<TCP(v6)?:", args))


def test_syscall_hygiene(server, mode, tmp_path) -> None:
    if not shutil.which("strace"):
        pytest.fail("strace is not installed (CI must apt-get install strace)")
    trace = tmp_path / "trace.txt"
    srv = server(edge=mode == "edge",
                 wrapper=["strace", "-f", "-qq", "-yy", "-ttt", "-s", "0", "-e", f"trace={TRACED}", "-o", str(trace)])
    # Traffic that takes every write path: small echo, a large write meeting a full socket
    # buffer, graceful close, reset, abort.
    a = connect(srv.port, rcvbuf=32 * 1024)
    a.sendall(b"ECHO\nhello")
    assert a.recv(10) == b"hello"
    b = connect(srv.port, rcvbuf=32 * 1024)
    b.sendall(b"WRITE 2000000\nCLOSE\n")
    time.sleep(0.2)
    got, how = recv_until_eof(b, 20)
    assert how == "eof" and len(got) == 2000000
    c = connect(srv.port)
    c.sendall(b"WRITE 10\nABORT\n")
    recv_until_eof(c, 5)
    rst_close(a)
    b.close()
    c.close()
    idle = connect(srv.port)
    srv.wait_until(lambda o: o.accepts >= 4 and o.closes >= 3, 10, "traffic done")
    time.sleep(0.3)
    t_idle0 = time.time()
    time.sleep(1.5)
    t_idle1 = time.time()
    idle.close()
    srv.wait_until(lambda o: o.closes >= 4, 10, "idle closed")
    srv.finish()

    calls = parse(trace)
    assert calls, "strace produced no parsable lines"
    problems = []
    sends = [args for _, call, args in calls if call in ("sendto", "sendmsg") and is_tcp(args)]
    assert len(sends) > 5, "the traffic did not produce socket sends under strace"
    for args in sends:
        if "MSG_NOSIGNAL" not in args:
            problems.append(f"send without MSG_NOSIGNAL: {args[:120]}")
    for _, call, args in calls:
        if call in ("write", "writev") and is_tcp(args):
            problems.append(f"{call} on a socket (SIGPIPE risk): {args[:120]}")
        if call == "accept":
            problems.append(f"plain accept (no CLOEXEC/NONBLOCK): {args[:120]}")
        if call == "accept4" and not ("SOCK_CLOEXEC" in args and "SOCK_NONBLOCK" in args):
            problems.append(f"accept4 without SOCK_CLOEXEC|SOCK_NONBLOCK: {args[:120]}")
        if call == "socket" and "SOCK_CLOEXEC" not in args:
            problems.append(f"socket without SOCK_CLOEXEC: {args[:120]}")
        if call in ("epoll_create", "epoll_create1") and "EPOLL_CLOEXEC" not in args:
            problems.append(f"{call} without EPOLL_CLOEXEC: {args[:120]}")
        if call in ("eventfd", "eventfd2") and "EFD_CLOEXEC" not in args:
            problems.append(f"{call} without EFD_CLOEXEC: {args[:120]}")
        if call in ("pipe", "pipe2") and "O_CLOEXEC" not in args:
            problems.append(f"{call} without O_CLOEXEC: {args[:120]}")
        if call == "timerfd_create" and "TFD_CLOEXEC" not in args:
            problems.append(f"timerfd_create without TFD_CLOEXEC: {args[:120]}")
    accepts = [args for _, call, args in calls if call == "accept4"]
    assert len(accepts) >= 4
    waits = [ts for ts, call, _ in calls if call.startswith("epoll_wait") or call.startswith("epoll_pwait")]
    idle_waits = [ts for ts in waits if t_idle0 <= ts <= t_idle1]
    if len(idle_waits) > 3:
        problems.append(f"{len(idle_waits)} epoll waits during 1.5 s of idleness")
    assert not problems, "\n".join(problems[:20])
