"""What a send costs from Python: one ctypes call, against recording it for ep_poll's commands.

    target/bench-venv/bin/python bench/crossing_costs.py [--count N]

Issue 12 proposed batching the sends of a step into the command buffer that the next ``ep_poll``
applies, so that an echo costs one C crossing instead of two. That only pays if writing a command
into memory C can read costs less, in Python, than the ctypes call it replaces. This measures
both, in user-space instructions per operation under callgrind (each variant runs N times and 0
times in its own process; the difference divided by N is the figure, loop overhead subtracted
with an empty variant), so the figures do not move with the machine's load:

* ``ctypes ep_send``: the binding's hot call, without argtypes, on a registered socketpair (the
  library's own work included: a ``send(2)`` and, once the peer's buffer is full, a copy).
* ``ctypes ep_fd``: a two-argument call that does almost nothing: the crossing itself.
* the ways of recording a 64-byte send for ``ep_poll`` (C-readable memory: an ``array`` whose
  address ``buffer_info()`` gives, or a ctypes buffer written through a memoryview), and a plain
  ``list.append``, which C cannot read, as the floor of any recording;
* ``os.write`` on a socket: what the binding's send does instead while the library's queue is
  empty (a 64-byte write(2) with the GIL dropped and retaken; the reader side is drained every
  256 operations in every variant, the empty loop's included);
* ctypes calls of libc's ``getpid`` and ``abs``: the crossing with no and with one argument
  (against ``ep_fd``'s two): what ``ep_poll_with``'s single argument saves per step.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

VARIANTS = {
    "empty loop": "pass",
    "ctypes ep_send (64 B)": "send(lp, cid, data, 64)",
    "ctypes ep_fd": "fd(lp, cid)",
    "record: array.extend + array.frombytes": "cmds.extend((1, conn_id, len(out), 64)); out.frombytes(data)",
    "record: struct.pack_into + memoryview slice": (
        "pos = i & 4095; view[pos:pos + 64] = data; pack_into(cview, (i & 511) * 32, 1, 0, conn_id, pos, 64)"
    ),
    "record: list.append (not C-readable)": "pending.append((conn_id, data))",
    "os.write on a socket (the binding's direct path)": "write(wfd, data)",
    "ctypes, no argument (getpid)": "getpid()",
    "ctypes, one argument (abs)": "absolute(5)",
}

SETUP = """
import ctypes, socket, struct, sys
from array import array
import eploop
from eploop import _ffi
from eploop._registration import _id_arg
lp = _ffi.lib.ep_loop_new(0)
a, b = socket.socketpair()
conn_id = _ffi.lib.ep_register(lp, a.detach(), _ffi.EP_QUEUE, None, None)
assert conn_id > 0, conn_id
cid = _id_arg(conn_id)
send, fd = _ffi.hot.ep_send, _ffi.hot.ep_fd
data = b"x" * 64
cmds, out, pending = array("Q"), array("B"), []
cbuf = ctypes.create_string_buffer(8192); view = memoryview(cbuf).cast("B")
cmdbuf = ctypes.create_string_buffer(32 * 512); cview = memoryview(cmdbuf).cast("B")
pack_into = struct.Struct("<IIQQQ").pack_into
import os
wsock, rsock = socket.socketpair()
wsock.setblocking(False); rsock.setblocking(False)
wfd, write = wsock.fileno(), os.write
libc = ctypes.PyDLL(None)
getpid, absolute = libc.getpid, libc.abs

def drain():
    try:
        while rsock.recv(1 << 20):
            pass
    except BlockingIOError:
        pass

def run(n):
    for i in range(n):
        {body}
        if i & 255 == 255:
            del cmds[:], out[:], pending[:]
            drain()

run(int(sys.argv[1]))
"""


def instructions(body: str, n: int, workdir: Path) -> int:
    script = workdir / "variant.py"
    script.write_text(SETUP.replace("{body}", body))
    out = workdir / "callgrind.out"
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                    str(script), str(n)], check=True, capture_output=True)
    m = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.M)
    assert m, "no callgrind total"
    return int(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=20000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="crossing-") as tmp:
        per_op = {}
        for name, body in VARIANTS.items():
            work = Path(tmp)
            per_op[name] = (instructions(body, args.count, work) - instructions(body, 0, work)) / args.count
        base = per_op.pop("empty loop")
        print(f"Python {sys.version.split()[0]}, {args.count} operations each, instructions per "
              f"operation (callgrind, the loop's own {base:,.0f} subtracted):")
        for name, value in per_op.items():
            print(f"  {name:50s} {value - base:8,.0f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
