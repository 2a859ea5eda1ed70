"""UDP backpressure on a real (virtual) link: a sender faster than the link.

Two hosts in network namespaces of the test's own (netns.py); the sender's side of the link is
throttled (a token bucket that queues instead of dropping), so its socket buffer fills and the
kernel answers EAGAIN. udp_sender.py (the README's pattern: send while ``sendto()`` says True,
go on from ``on_writable``) must then see False at least once, get one ``on_writable`` per
False, and every datagram must reach the receiver, in order — the library queued what the
kernel refused and sent it when the socket was writable; its ``close()`` sent the queue before
``on_close(LOCAL)``.

Skips (with the reason printed) only where network namespaces cannot be created.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RECEIVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE: root in its namespace
s.bind((sys.argv[1], 0)); s.settimeout(10)
print(s.getsockname()[1], flush=True)
seen = []
try:
    while len(seen) < int(sys.argv[2]):
        seen.append(int.from_bytes(s.recv(65536)[:4], "big"))
except socket.timeout:
    pass
print(len(seen), int(seen == sorted(seen) and len(set(seen)) == len(seen)), flush=True)
"""


def test_a_sender_faster_than_the_link_is_queued_not_dropped(net) -> None:
    count, size = 3000, 1200
    net.throttle("srv", "20mbit")
    receiver = subprocess.Popen(
        net.exec("peer", [sys.executable, "-c", RECEIVER, net.addr("peer"), str(count)]),
        stdout=subprocess.PIPE, text=True)
    try:
        port = int(receiver.stdout.readline())
        env = {"PYTHONPATH": str(ROOT / "python-bindings"), "PATH": "/usr/bin:/bin"}
        sender = subprocess.run(
            net.exec("srv", [sys.executable, str(HERE / "udp_sender.py"), net.addr("srv"),
                             net.addr("peer"), str(port), str(count), str(size)]),
            capture_output=True, text=True, timeout=60, env=env)
        assert sender.returncode == 0, sender.stderr
        report = json.loads(sender.stdout.strip().splitlines()[-1])
        received, in_order = (int(x) for x in receiver.stdout.readline().split())
        receiver.wait(20)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    print("udp sender:", report, "received", received)
    assert report["sent"] == count
    assert report["stops"] >= 1, f"the link never pushed back: {report}"
    assert report["writables"] == report["stops"], report
    assert report["closes"] == ["local 0"], report
    assert (received, in_order) == (count, 1), f"received {received} of {count}; in order: {in_order}"
