"""UDP endpoints: ``Loop.datagram_endpoint`` and ``DatagramEndpoint``.

A datagram endpoint has no peer that can leave. Its handler gets ``on_datagram(data, addr)``
for every datagram, ``on_error(exc)`` (optional) for what the network says about earlier
datagrams — an ICMP "port unreachable" on a connected endpoint arrives as a
``ConnectionRefusedError`` — and ``on_close(reason, err)`` once, when the endpoint ends: by
``close()``/``abort()``, by ``Loop.close()``, or by a fatal error of the socket. A handler that
raises does not end the endpoint (a datagram carries no state that could be left half-done): the
exception goes to the loop's exception handler and the next datagram is delivered as usual.

``sendto()`` never blocks and never raises because of the network: a datagram the kernel cannot
take now is queued and sent in order; it returns False once the queue is above the high-water
mark (``on_writable()`` follows at the low one). Mistakes of the caller raise ``EploopError``:
a datagram longer than 65,507 bytes (EMSGSIZE), a broadcast address without
``set_broadcast(True)`` (EACCES), no address on an endpoint that is not connected
(EDESTADDRREQ), a non-numeric host (ValueError: a name lookup would block the loop).

Addresses are tuples, as the ``socket`` module and asyncio give them: ``(host, port)`` for IPv4
and ``(host, port, flowinfo, scope_id)`` for IPv6 (an endpoint bound to ``""`` reports IPv4
senders as ``"::ffff:a.b.c.d"``). The conversions are cached per address.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import TYPE_CHECKING, Any

from . import _ffi
from ._connection import _ep_abort
from ._errors import _error
from ._ffi import hot, lib
from ._registration import _ep_close, _ep_pause, _ep_resume, _id_arg, _Registration

if TYPE_CHECKING:
    from ._loop import Loop

_ep_sendto = hot.ep_sendto

_AF_INET, _AF_INET6 = int(socket.AF_INET), int(socket.AF_INET6)
_NATIVE = sys.byteorder
_CACHE_MAX = 4096


class DatagramHandler:
    """Base class for datagram handlers: subclass it and override what you need (any object
    with an ``on_datagram(data, addr)`` method will do too).

    ``self.endpoint`` is set before any method runs. Methods run on the loop's thread and must
    not block.
    """

    endpoint: DatagramEndpoint

    def on_datagram(self, data: bytes, addr: Any) -> None:
        """A datagram arrived from ``addr`` (possibly empty; a ``TruncatedDatagram`` if it was
        longer than the endpoint's ``max_size``)."""

    def on_error(self, exc: OSError) -> None:
        """The network refused earlier datagrams (``ConnectionRefusedError`` on a connected
        endpoint, an unreachable host...); the endpoint stays open."""

    def on_writable(self) -> None:
        """The send queue drained to its low-water mark after ``sendto()`` returned False."""

    def on_close(self, reason: Any, errno: int) -> None:
        """The endpoint ended (LOCAL, ABORT, LOOP_FREED, or ERROR with the errno); once."""


class TruncatedDatagram(bytes):
    """A datagram longer than the endpoint's ``max_size``, cut to it. ``on_datagram`` receives
    it in place of ``bytes`` so that a cut is never silent: test ``isinstance(data,
    eploop.TruncatedDatagram)``."""


# -- addresses: kernel layout (struct sockaddr_in / sockaddr_in6) <-> tuples

_decoded: dict[bytes, tuple[Any, ...]] = {}
_encoded: dict[tuple[Any, ...], bytes] = {}


def decode_address(raw: bytes) -> tuple[Any, ...]:
    """A sender's address, as a tuple (cached)."""
    addr = _decoded.get(raw)
    if addr is None:
        family = int.from_bytes(raw[:2], _NATIVE)
        port = int.from_bytes(raw[2:4], "big")
        if family == _AF_INET:
            addr = (socket.inet_ntop(_AF_INET, raw[4:8]), port)
        elif family == _AF_INET6:
            flowinfo = int.from_bytes(raw[4:8], "big")
            scope_id = int.from_bytes(raw[24:28], _NATIVE)
            addr = (socket.inet_ntop(_AF_INET6, raw[8:24]), port, flowinfo, scope_id)
        else:
            addr = (raw.hex(), 0)
        if len(_decoded) >= _CACHE_MAX:
            _decoded.clear()
        _decoded[raw] = addr
    return addr


def encode_address(addr: Any) -> bytes:
    """A destination tuple in the kernel's layout (cached). Hosts must be numeric
    (``"localhost"`` is 127.0.0.1): a name lookup would block the loop."""
    key = tuple(addr)
    raw = _encoded.get(key)
    if raw is not None:
        return raw
    if len(key) < 2 or not isinstance(key[0], str) or not isinstance(key[1], int):
        raise TypeError(f"an address is a (host, port) tuple, not {addr!r}")
    host, port = ("127.0.0.1" if key[0] == "localhost" else key[0]), key[1]
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port out of range: {addr!r}")
    try:
        if ":" in host:
            scope = key[3] if len(key) > 3 else 0
            if "%" in host:
                host, name = host.split("%", 1)
                scope = int(name) if name.isdigit() else socket.if_nametoindex(name)
            raw = b"".join(
                (
                    _AF_INET6.to_bytes(2, _NATIVE),
                    port.to_bytes(2, "big"),
                    (key[2] if len(key) > 2 else 0).to_bytes(4, "big"),
                    socket.inet_pton(_AF_INET6, host),
                    scope.to_bytes(4, _NATIVE),
                )
            )
        else:
            packed = socket.inet_pton(_AF_INET, host)
            raw = _AF_INET.to_bytes(2, _NATIVE) + port.to_bytes(2, "big") + packed + bytes(8)
    except OSError:
        raise ValueError(f"not a numeric address (names are not looked up): {addr!r}") from None
    if len(_encoded) >= _CACHE_MAX:
        _encoded.clear()
    _encoded[key] = raw
    return raw


class DatagramEndpoint(_Registration):
    """A UDP socket in the loop (see the module docstring)."""

    __slots__ = ("_id_ref", "_muted", "_port", "handler")

    def __init__(self, loop: Loop, reg_id: int, handler: Any) -> None:
        super().__init__(loop, reg_id)
        self._id_ref = _id_arg(reg_id)  # (_cid, kept: every sendto takes it)
        self.handler = handler
        self._muted = False  # after close()/abort(): nothing but on_close
        self._port: int = lib.ep_local_port(self._lp, self.id)

    @property
    def port(self) -> int:
        """The local port (useful after binding port 0); any thread may read it."""
        return self._port

    def sendto(self, data: Any, addr: Any = None) -> bool:
        """Send one datagram (``bytes``-like, up to 65,507 bytes) to ``addr``, or, with
        ``addr`` None, to the address given to ``connect()``. True while the send queue is at
        or below its high-water mark, False above it (wait for ``on_writable``). Never blocks;
        what the network answers goes to ``on_error``."""
        if type(data) is not bytes:
            data = bytes(data)
        if addr is None:
            code = _ep_sendto(self._lp, self._id_ref, data, len(data), None, 0)
        else:
            raw = encode_address(addr)
            code = _ep_sendto(self._lp, self._id_ref, data, len(data), raw, len(raw))
        if code == 0:
            return True
        if code == 1:
            return False
        self._check(code, "ep_sendto")
        return False  # (not reached: _check raised)

    def connect(self, addr: tuple[str, int]) -> None:
        """Make ``addr`` (numeric) the default destination: ``sendto(data)`` goes there, only
        its datagrams are received, and an ICMP "port unreachable" reaches ``on_error`` as
        ``ConnectionRefusedError``."""
        host, port = addr[0], addr[1]
        self._check(lib.ep_udp_connect(self._lp, self.id, host.encode(), port), "ep_udp_connect")

    def join_group(self, group: str, interface: str | None = None) -> None:
        """Join the multicast group ``group`` (numeric). ``interface``: None for the kernel's
        choice; for IPv4 an interface address or name, for IPv6 a name or index."""
        iface = interface.encode() if interface else None
        self._check(lib.ep_udp_join(self._lp, self.id, group.encode(), iface), "ep_udp_join")

    def leave_group(self, group: str, interface: str | None = None) -> None:
        """Leave a group joined with ``join_group`` (same arguments)."""
        iface = interface.encode() if interface else None
        self._check(lib.ep_udp_leave(self._lp, self.id, group.encode(), iface), "ep_udp_leave")

    def _option(self, option: int, value: int) -> None:
        self._check(lib.ep_udp_set_option(self._lp, self.id, option, value), "ep_udp_set_option")

    def set_broadcast(self, enabled: bool) -> None:
        """Allow sending to broadcast addresses (SO_BROADCAST)."""
        self._option(_ffi.EP_UDP_BROADCAST, int(enabled))

    def set_multicast_loop(self, enabled: bool) -> None:
        """Whether this host's own group members receive what this endpoint sends."""
        self._option(_ffi.EP_UDP_MULTICAST_LOOP, int(enabled))

    def set_multicast_ttl(self, ttl: int) -> None:
        """How many routers multicast datagrams cross (0-255; default 1)."""
        self._option(_ffi.EP_UDP_MULTICAST_TTL, ttl)

    def set_multicast_interface(self, interface: str | int) -> None:
        """The interface multicast datagrams leave by: a name ("lo") or an index (0: the
        routing table's choice)."""
        index = socket.if_nametoindex(interface) if isinstance(interface, str) else interface
        self._option(_ffi.EP_UDP_MULTICAST_IF, index)

    def set_max_size(self, size: int) -> None:
        """Datagrams longer than ``size`` bytes arrive cut to it, as ``TruncatedDatagram``."""
        self._option(_ffi.EP_UDP_MAX_DATAGRAM, size)

    def pause_reading(self) -> None:
        """Stop delivering datagrams (they wait in the kernel's buffer, or are dropped there)."""
        self._check(_ep_pause(self._lp, self._id_ref), "ep_pause_reading")

    def resume_reading(self) -> None:
        self._check(_ep_resume(self._lp, self._id_ref), "ep_resume_reading")
        self.loop._kick()

    def close(self) -> None:
        """Stop reading, send what is queued, then close: ``on_close(LOCAL)`` (or
        ``TIMEOUT`` if the queue made no progress for the loop's linger time). Idempotent;
        nothing but that ``on_close`` follows."""
        self._end(_ep_close, "ep_close")

    def abort(self) -> None:
        """Close now, dropping what is queued; then ``on_close(ABORT)``. Idempotent."""
        self._end(_ep_abort, "ep_abort")

    def _end(self, end: Any, name: str) -> None:
        if self._end_call(end, name):
            self._muted = True
            self.loop._kick()

    # -- the step's events (see _events)

    def _on_datagram(self, data: bytes, raw_addr: bytes, flags: int) -> None:
        if self._muted:
            return
        if flags & _ffi.EP_DGRAM_TRUNCATED:
            data = TruncatedDatagram(data)
        self.handler.on_datagram(data, decode_address(raw_addr))

    def _on_error(self, err: int) -> None:
        on_error = getattr(self.handler, "on_error", None)
        if on_error is not None and not self._muted:
            on_error(OSError(err, os.strerror(err)))  # (a builtin subclass: ConnectionRefusedError)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"port={self._port}"
        return f"<eploop.DatagramEndpoint id={self.id} {state}>"


class _DatagramHosting:
    """``Loop.datagram_endpoint`` (a mixin of ``Loop``)."""

    def datagram_endpoint(
        self: Any,
        addr: tuple[str, int],
        handler: Any,
        *,
        connect: tuple[str, int] | None = None,
        reuse_port: bool = False,
        edge: bool = False,
        max_size: int | None = None,
    ) -> DatagramEndpoint:
        """A UDP endpoint bound to ``addr`` = ``(host, port)``: ``host`` numeric, ``"localhost"``,
        ``""`` for every address (IPv6 and IPv4) or ``"0.0.0.0"`` for every IPv4 one; port 0
        picks a free one (``endpoint.port``). ``handler`` has ``on_datagram(data, addr)``
        (a class or factory without it is called once to make the handler). ``connect``: a
        default destination (see ``DatagramEndpoint.connect``). ``reuse_port``: SO_REUSEADDR and
        SO_REUSEPORT (several endpoints on one port, e.g. multicast listeners). ``max_size``:
        see ``DatagramEndpoint.set_max_size``."""
        if isinstance(handler, type) or (callable(handler) and not hasattr(handler, "on_datagram")):
            handler = handler()  # a class or a factory
        if not callable(getattr(handler, "on_datagram", None)):
            raise TypeError(f"{handler!r} has no on_datagram(data, addr) method")
        flags = _ffi.EP_QUEUE | (_ffi.EP_REUSEPORT if reuse_port else 0)
        flags |= _ffi.EP_EDGE if edge else 0
        host, port = addr[0], addr[1]
        code = lib.ep_udp_bind(self._open_lp(), host.encode(), port, flags, None, self._key)
        if code < 0:
            raise _error(code, f"datagram_endpoint {addr!r}")
        endpoint = DatagramEndpoint(self, code, handler)
        try:
            handler.endpoint = endpoint
        except AttributeError:  # (a handler with __slots__ and no room for it)
            pass
        self._registrations[code] = endpoint
        try:
            if connect is not None:
                endpoint.connect(connect)
            if max_size is not None:
                endpoint.set_max_size(max_size)
        except BaseException:
            endpoint.abort()
            raise
        return endpoint
