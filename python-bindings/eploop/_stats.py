"""``Stats``: a loop's counters, read from ``struct ep_stats``."""

from __future__ import annotations

import ctypes
import dataclasses
from ctypes import byref
from typing import Any

from . import _ffi
from ._errors import CloseReason, _error
from ._ffi import lib


@dataclasses.dataclass(frozen=True)
class Stats:
    """A loop's counters (``Loop.stats()``)."""

    open: int  #: registrations open now (listeners, connections, other fds)
    lingering: int  #: sockets still draining after a graceful close
    timers: int  #: timers pending
    accepted: int  #: connections accepted since the loop was created
    accept_overloads: int  #: accepts refused or paused because fds or memory ran out
    stale_events: int  #: events dropped because their registration had just ended
    bytes_in: int  #: bytes delivered through on_data
    bytes_out: int  #: bytes handed to the kernel
    closes: dict[CloseReason, int]  #: on_close calls so far, by reason



def read_stats(lp: Any, direct_out: int) -> Stats:
    """``ep_get_stats`` on the loop pointer ``lp``, as a ``Stats`` (``direct_out``: the bytes
    the binding wrote to sockets itself, see ``Connection.send``)."""
    raw = _ffi.Stats()
    code = lib.ep_get_stats(lp, byref(raw), ctypes.sizeof(raw))
    if code < 0:
        raise _error(code, "ep_get_stats")
    return Stats(
        open=raw.open,
        lingering=raw.lingering,
        timers=raw.timers,
        accepted=raw.accepted,
        accept_overloads=raw.accept_overloads,
        stale_events=raw.stale_events,
        bytes_in=raw.bytes_in,
        bytes_out=raw.bytes_out + direct_out,
        closes={reason: raw.closes[reason.value] for reason in CloseReason},
    )
