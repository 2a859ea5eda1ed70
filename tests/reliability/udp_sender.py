"""A UDP sender written the way the README shows: it sends numbered datagrams as long as
``sendto()`` says True, stops when it says False and goes on from ``on_writable``. Run on a
throttled link (test_rel_udp.py), the kernel answers EAGAIN and the library queues: every
datagram must still leave, in order.

usage: udp_sender.py BIND_HOST DEST_HOST DEST_PORT COUNT SIZE
Prints one JSON line: sent, stop (sendto returned False), writable (on_writable calls), closes.
"""

from __future__ import annotations

import json
import sys

import eploop

bind_host, dest_host, dest_port, count, size = sys.argv[1:6]
DEST = (dest_host, int(dest_port))
COUNT, SIZE = int(count), int(size)


class Sender(eploop.DatagramHandler):
    def __init__(self) -> None:
        self.next = 0
        self.stops = 0
        self.writables = 0
        self.closes: list[str] = []

    def produce(self) -> None:
        while self.next < COUNT:
            payload = self.next.to_bytes(4, "big") * (SIZE // 4)
            self.next += 1
            if not self.endpoint.sendto(payload, DEST):
                self.stops += 1
                return  # on_writable resumes
        self.endpoint.close()  # what is queued goes out first

    def on_writable(self) -> None:
        self.writables += 1
        self.produce()

    def on_datagram(self, data: bytes, addr: object) -> None:
        pass

    def on_close(self, reason: eploop.CloseReason, errno: int) -> None:
        self.closes.append(f"{reason} {errno}")


sender = Sender()
with eploop.Loop() as loop:
    loop.datagram_endpoint((bind_host, 0), sender)
    sender.produce()
    loop.run()
print(json.dumps({"sent": sender.next, "stops": sender.stops, "writables": sender.writables,
                  "closes": sender.closes}), flush=True)
