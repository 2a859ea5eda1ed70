"""A C host with SIGPIPE at its default action survives a peer reset while output is queued."""

from __future__ import annotations

import errno
import signal
import socket
import subprocess

import pytest


@pytest.fixture
def sigpipe_host(h, tmp_path):
    """Compile tests/examples/c/sigpipe_host.c against target/release/libeploop.so."""
    library = h.LIB_DIR / "libeploop.so"
    assert library.exists(), f"{library} is missing: run `make lib`"
    binary = tmp_path / "sigpipe_host"
    build = subprocess.run(
        [h.require_tool("gcc"), "-std=c11", "-Wall", "-Wextra", "-Werror", "-D_GNU_SOURCE", "-O2",
         f"-I{h.INCLUDE_DIR}", "-o", str(binary), str(h.C_TEST_DIR / "sigpipe_host.c"),
         f"-L{h.LIB_DIR}", "-leploop", f"-Wl,-rpath,{h.LIB_DIR}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert build.returncode == 0, build.stderr
    return binary


def test_reset_with_queued_output_does_not_kill_the_host(run_program, h, sigpipe_host):
    host = run_program([str(sigpipe_host)])
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.settimeout(h.TIMEOUT)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # read nothing, hold little
    client.connect(("127.0.0.1", host.port))
    queued = host.wait_for(r"^queued (\d+) (-?\d+)$")[0]
    assert int(queued[1]) == 16 << 20
    assert queued[2] == "1", "ep_send should report the queue above its high-water mark"

    h.reset_close(client)
    code = host.wait_exit(10)
    assert code != -signal.SIGPIPE, f"the host was killed by SIGPIPE\n{host.log()}"
    assert code == 0, host.log()
    closes = host.closes()
    assert len(closes) == 1, host.log()
    _conn_id, reason, err = closes[0]
    assert reason == "peer_reset"
    assert err in (errno.ECONNRESET, errno.EPIPE), errno.errorcode.get(err, err)
    assert host.lines[-1] == "result ok"
