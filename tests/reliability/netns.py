"""Two test hosts on a private link, for dead-peer tests on a real (virtual) network.

    with NetPair() as net:                       # creates namespaces "<net.srv>" and "<net.peer>"
        srv = Popen(net.exec("srv", [...]))     # a process on the server host
        net.vanish("peer")                       # the peer's cable is pulled: it sends nothing more

A NetPair is two network namespaces created for this run (unique names: eplsrv-<pid>-<hex>,
eplpeer-<pid>-<hex>), joined by a veth pair with the addresses of a private /30 (10.213.x.1 and
.2) and of a ULA /64 (fd65:706c:<x>::1 and ::2, no DAD, usable at once). Nothing is added to
the root namespace, so the host's routes and addresses are never touched. `vanish(side)` puts a
qdisc on that side's veth that drops every packet it would send (data, ACKs, keepalive answers,
ARP/ND replies): for the other host it is as if the cable had been pulled behind a switch — no
FIN, no RST, no ICMP, its own link stays up. It uses `netem loss 100%` where the kernel has
netem, and otherwise a token bucket too small for any frame (`tbf burst 40b limit 1b`), which
drops every packet just the same; `dropper` says which one was used.

Leaving the `with` block (or close()) deletes both namespaces, which destroys the veth pair.
Processes started in them must be ended first, by pid, by their owner (a namespace with a
live process outlives its name). `sweep()` deletes namespaces left behind by test processes
that no longer exist (a SIGKILLed pytest), first killing, by pid, what still runs inside them. `unavailable()` says why namespaces cannot be
created here (not root, no iproute2), or None.

Standard library only. Command line: `python3 netns.py sweep` | `python3 netns.py check`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys

PREFIXES = ("eplsrv-", "eplpeer-")


class NetnsError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def _tc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["tc", *args], capture_output=True, text=True, timeout=20)


def unavailable() -> str | None:
    """Why network namespaces cannot be created here, or None if they can."""
    if shutil.which("ip") is None:
        return "iproute2 (the `ip` command) is not installed"
    if shutil.which("tc") is None:
        return "iproute2's `tc` command is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (this test runs as uid %d)" % os.geteuid()
    name = f"eplsrv-{os.getpid()}-probe{secrets.token_hex(2)}"
    proc = _ip("netns", "add", name, check=False)
    if proc.returncode != 0:
        return f"`ip netns add` failed: {proc.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return None


def sweep() -> list[str]:
    """Delete namespaces this helper made for processes that no longer exist; returns them."""
    gone = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(PREFIXES):
            continue
        pid = name.split("-")[1]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            # Processes that dead test started inside its own namespace: end them by pid.
            for child in _ip("netns", "pids", name, check=False).stdout.split():
                try:
                    os.kill(int(child), 9)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("netns", "del", name, check=False)
            gone.append(name)
    return gone


class NetPair:
    """Two namespaces joined by a veth pair; see the module docstring."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.ns = {"srv": f"eplsrv-{os.getpid()}-{tag}", "peer": f"eplpeer-{os.getpid()}-{tag}"}
        self.dev = {"srv": f"eps{tag}", "peer": f"epp{tag}"}  # at most 15 characters
        x = int(tag[:2], 16)
        self.addr4 = {"srv": f"10.213.{x}.1", "peer": f"10.213.{x}.2"}
        self.addr6 = {"srv": f"fd65:706c:{x:x}::1", "peer": f"fd65:706c:{x:x}::2"}
        self.dropper: str | None = None
        self._made: list[str] = []
        try:
            self._create()
        except BaseException:
            self.close()
            raise

    def _create(self) -> None:
        for side in ("srv", "peer"):
            _ip("netns", "add", self.ns[side])
            self._made.append(self.ns[side])
        _ip("link", "add", self.dev["srv"], "netns", self.ns["srv"], "type", "veth",
            "peer", "name", self.dev["peer"], "netns", self.ns["peer"])
        for side in ("srv", "peer"):
            n, d = self.ns[side], self.dev[side]
            _ip("-n", n, "link", "set", "lo", "up")
            _ip("-n", n, "addr", "add", f"{self.addr4[side]}/30", "dev", d)
            _ip("-n", n, "-6", "addr", "add", f"{self.addr6[side]}/64", "dev", d, "nodad")
            _ip("-n", n, "link", "set", d, "up")

    def addr(self, side: str, family: int = 4) -> str:
        return self.addr4[side] if family == 4 else self.addr6[side]

    def exec(self, side: str, argv: list[str]) -> list[str]:
        """argv run inside that side's namespace (`ip netns exec` execs it: same pid)."""
        return ["ip", "netns", "exec", self.ns[side], *argv]

    def vanish(self, side: str) -> str:
        """From now on that side sends nothing: every packet leaving its veth is dropped."""
        n, d = self.ns[side], self.dev[side]
        proc = _tc("-n", n, "qdisc", "add", "dev", d, "root", "netem", "loss", "100%")
        if proc.returncode == 0:
            self.dropper = "netem loss 100%"
            return self.dropper
        netem_err = proc.stderr.strip()
        # No netem in this kernel: a token bucket whose burst (40 bytes) is smaller than any
        # frame (the smallest, an ARP reply, is 42) drops every packet just the same.
        proc = _tc("-n", n, "qdisc", "add", "dev", d, "root", "tbf", "rate", "1kbit", "burst", "40b",
                   "limit", "1b")
        if proc.returncode != 0:
            raise NetnsError(f"cannot drop {side}'s packets: netem: {netem_err}; tbf: {proc.stderr.strip()}")
        self.dropper = "tbf burst 40b (this kernel has no netem)"
        return self.dropper

    def throttle(self, side: str, rate: str = "20mbit") -> None:
        """That side's veth sends at most `rate`, queueing (up to 8 MB) rather than dropping:
        a sender faster than the link fills its socket buffer and meets EAGAIN."""
        n, d = self.ns[side], self.dev[side]
        proc = _tc("-n", n, "qdisc", "add", "dev", d, "root", "tbf", "rate", rate, "burst", "32kb",
                   "limit", "8mb")
        if proc.returncode != 0:
            raise NetnsError(f"cannot throttle {side}: {proc.stderr.strip()}")

    def dropped(self, side: str) -> int:
        """Packets the vanish qdisc on that side has dropped so far."""
        out = _tc("-n", self.ns[side], "-s", "qdisc", "show", "dev", self.dev[side]).stdout
        for word, nxt in zip(out.split(), out.split()[1:]):
            if word == "(dropped":
                return int(nxt.rstrip(","))
        return 0

    def close(self) -> None:
        for name in reversed(self._made):
            _ip("netns", "del", name, check=False)
        self._made.clear()

    def __enter__(self) -> "NetPair":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":
    if sys.argv[1:] == ["sweep"]:
        for name in sweep():
            print(f"netns: deleted stale namespace {name}")
    elif sys.argv[1:] == ["check"]:
        why = unavailable()
        print(f"netns: unavailable: {why}" if why else "netns: available")
        sys.exit(1 if why else 0)
    else:
        print("usage: netns.py sweep|check", file=sys.stderr)
        sys.exit(2)
