"""Loading libeploop.so and declaring its C API for ctypes.

Everything ctypes needs to know about the library lives in this module: where to find it,
the one table of function signatures, the constants, and the callback types. The rest of the
package never touches ctypes declarations.

Two handles are opened on the same library:

* calls that may block (``ep_run``, ``ep_run_once``) go through a ``ctypes.CDLL`` handle, which
  releases the GIL for the duration of the call, so other threads run and signals get through;
* every other call cannot block and goes through a ``ctypes.PyDLL`` handle, which keeps the GIL:
  the hot path (a send from inside a callback) does not drop and retake it.

The few functions called once per loop step or per send (the ``hot`` column of the table) are
made without ``argtypes`` (``hot``) and called only that way: ctypes then skips its per-argument ``from_param`` conversion, which costs
more than the C function itself. Their callers pass objects whose C type is unambiguous: a
``byref()`` for the loop and one for each id (built once; see ``_registration._id_arg``),
``bytes`` or ctypes buffers for pointers, and plain ``int`` only where the C parameter is an ``int`` (or a
``size_t`` below 2**31: libffi sign-extends an ``int`` argument into the 64-bit register).
"""

from __future__ import annotations

import ctypes
import os
import struct
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_char_p,
    c_int,
    c_int64,
    c_size_t,
    c_uint16,
    c_uint32,
    c_uint64,
    c_void_p,
)
from pathlib import Path
from typing import Any, NamedTuple

from ._version import __version__

LIBRARY_ENV = "EPLOOP_LIBRARY"
LIBRARY_NAME = "libeploop.so"

# ---------------------------------------------------------------------------------------------
# Constants (mirroring include/eploop.h)

EP_EDGE = 1
EP_BORROW = 2
EP_HALF_CLOSE = 4
EP_REUSEPORT = 8
EP_QUEUE = 16
EP_UNREF = 32
EP_NAGLE = 64
EP_AUTO_PAUSE = 128
EP_IOV_MAX = 1024

EP_EVENT_ACCEPT = 1
EP_EVENT_DATA = 2
EP_EVENT_WRITABLE = 3
EP_EVENT_CLOSE = 4
EP_EVENT_DATAGRAM = 5
EP_EVENT_DATAGRAM_ERROR = 6
EP_DGRAM_TRUNCATED = 1
EP_UDP_BROADCAST = 1
EP_UDP_MULTICAST_LOOP = 2
EP_UDP_MULTICAST_TTL = 3
EP_UDP_MAX_DATAGRAM = 4
EP_UDP_MULTICAST_IF = 5
EP_DATAGRAM_MAX = 65507

EP_CMD_SEND = 1
EP_CMD_CLOSE = 2
EP_CMD_ABORT = 3
EP_CMD_SHUTDOWN = 4
EP_CMD_PAUSE = 5
EP_CMD_RESUME = 6
EP_SEND_PROMISED_WRITABLE = 1

EP_ESTALE = -4001
EP_ENULL = -4002
EP_EBUSY = -4003
EP_ECLOSING = -4004
EP_EKIND = -4005
EP_EPANIC = -4006
EP_ETHREAD = -4007
EP_EFORK = -4008

EP_RUN_EMPTY = 0
EP_RUN_MORE = 1
EP_RUN_STOPPED = 2

# "Wait until something happens" as the binding passes it to ep_poll: INT_MAX ms (24.8 days; a
# wait that long ends as a step with no events) rather than -1, because ctypes converts an int
# argument without argtypes as unsigned first and, for a negative one, raises and clears an
# OverflowError on every call (~800 instructions per step under callgrind).
WAIT_FOREVER_MS = 2**31 - 1

EP_TRACE_EPOLL = 1
EP_TRACE_READ = 2
EP_TRACE_WRITE = 3
EP_TRACE_EOF_HELD = 4
EP_TRACE_HANGUP = 5
EP_TRACE_FIN_SENT = 6
EP_TRACE_CLOSE = 7

# ---------------------------------------------------------------------------------------------
# Callback types and the callbacks struct

ON_ACCEPT = CFUNCTYPE(None, c_void_p, c_uint64, c_uint64, c_void_p)
ON_DATA = CFUNCTYPE(None, c_void_p, c_uint64, c_void_p, c_size_t, c_void_p)
ON_WRITABLE = CFUNCTYPE(None, c_void_p, c_uint64, c_void_p)
ON_CLOSE = CFUNCTYPE(None, c_void_p, c_uint64, c_int, c_int, c_void_p)
TIMER_CB = CFUNCTYPE(None, c_void_p, c_uint64, c_void_p)
POST_CB = CFUNCTYPE(None, c_void_p, c_void_p)
SIGNAL_CB = CFUNCTYPE(None, c_void_p, c_uint64, c_int, c_void_p)  # (Python uses _signals.py)
RELEASE_CB = CFUNCTYPE(None, c_void_p)  # ep_release_fn
ON_DATAGRAM = CFUNCTYPE(
    None, c_void_p, c_uint64, c_void_p, c_size_t, c_void_p, c_uint32, c_uint32, c_void_p
)
ON_ERROR = CFUNCTYPE(None, c_void_p, c_uint64, c_int, c_void_p)


class IOVec(Structure):
    """``struct iovec``."""

    _fields_ = [("iov_base", c_void_p), ("iov_len", c_size_t)]


class Callbacks(Structure):
    """``struct ep_callbacks``."""

    _fields_ = [
        ("on_accept", ON_ACCEPT),
        ("on_data", ON_DATA),
        ("on_writable", ON_WRITABLE),
        ("on_close", ON_CLOSE),
    ]


class DatagramCallbacks(Structure):
    """``struct ep_datagram_callbacks`` (the binding registers with EP_QUEUE and passes NULL)."""

    _fields_ = [
        ("on_datagram", ON_DATAGRAM),
        ("on_writable", ON_WRITABLE),
        ("on_error", ON_ERROR),
        ("on_close", ON_CLOSE),
    ]


class Stats(Structure):
    """``struct ep_stats``."""

    _fields_ = [
        ("open", c_uint64),
        ("lingering", c_uint64),
        ("timers", c_uint64),
        ("accepted", c_uint64),
        ("accept_overloads", c_uint64),
        ("stale_events", c_uint64),
        ("bytes_in", c_uint64),
        ("bytes_out", c_uint64),
        ("closes", c_uint64 * 16),
    ]


class Command(Structure):
    """``struct ep_command``: one operation for ``ep_poll`` to apply before it waits."""

    _fields_ = [
        ("op", c_uint32),
        ("flags", c_uint32),
        ("id", c_uint64),
        ("offset", c_uint64),
        ("len", c_uint64),
    ]


class Commands(Structure):
    """``struct ep_commands``: the commands of one ``ep_poll`` step."""

    _fields_ = [
        ("cmds", POINTER(Command)),
        ("count", c_size_t),
        ("buf", c_void_p),
        ("buf_len", c_size_t),
        ("results", POINTER(c_int)),
    ]


class Event(Structure):
    """``struct ep_event``: one event of an EP_QUEUE registration, as ``ep_poll`` reports it."""

    _fields_ = [
        ("kind", c_uint32),
        ("reason", c_uint32),
        ("err", c_int),
        ("queued", c_uint32),
        ("id", c_uint64),
        ("listener", c_uint64),
        ("offset", c_uint64),
        ("len", c_uint64),
        ("user", c_void_p),
    ]


class TraceRecord(Structure):
    """``struct ep_trace_record``: one decision of the loop, for ``ep_set_trace``."""

    _fields_ = [
        ("kind", c_uint32),
        ("bits", c_uint32),
        ("id", c_uint64),
        ("result", c_int64),
        ("reason", c_int),
        ("err", c_int),
    ]


TRACE_CB = CFUNCTYPE(None, c_void_p, POINTER(TraceRecord), c_void_p)


class PollResult(Structure):
    """``struct ep_poll_result``: the events and data of one ``ep_poll`` step."""

    _fields_ = [
        ("events", POINTER(Event)),
        ("count", c_size_t),
        ("data", c_void_p),
        ("data_len", c_size_t),
        ("state", c_int),
    ]


class PollArgs(Structure):
    """``struct ep_poll_args``: ``ep_poll``'s arguments and result in one block, for
    ``ep_poll_with`` (one argument to convert per step instead of four)."""

    _fields_ = [
        ("lp", c_void_p),
        ("timeout_ms", c_int),
        ("commands", POINTER(Commands)),
        ("result", PollResult),
    ]



# The struct module's codes for the ctypes field types above (the step decoder reads ep_event
# and ep_poll_result with one struct unpack rather than attribute by attribute).
_STRUCT_CODES = {c_uint32: "I", c_int: "i", c_uint64: "Q", c_size_t: "N", c_void_p: "P"}


def struct_of(structure: Any, skip: tuple[str, ...] = ()) -> struct.Struct:
    """A ``struct.Struct`` reading ``structure``'s fields in order, in native layout, with the
    fields named in ``skip`` (and any padding) read as pad bytes: the layout is described once,
    by the ctypes ``Structure``."""
    fmt = "@"
    position = 0
    for name, ctype in structure._fields_:
        field = getattr(structure, name)
        if field.offset > position:
            fmt += f"{field.offset - position}x"
        code = "P" if name not in skip and issubclass(ctype, ctypes._Pointer) else None
        code = code or _STRUCT_CODES.get(ctype)
        if name in skip or code is None:
            if name not in skip:
                raise TypeError(f"{structure.__name__}.{name}: no struct code for {ctype}")
            fmt += f"{field.size}x"
        else:
            fmt += code
        position = field.offset + field.size
    if ctypes.sizeof(structure) > position:
        fmt += f"{ctypes.sizeof(structure) - position}x"
    layout = struct.Struct(fmt)
    assert layout.size == ctypes.sizeof(structure), (structure, fmt)
    return layout


# ``ep_event`` without its ``user`` field: kind, reason, err, queued, id, listener, offset, len.
EVENT_LAYOUT = struct_of(Event, skip=("user",))
# ``ep_poll_result``: events, count, data, data_len, state.
POLL_RESULT_LAYOUT = struct_of(PollResult)
# ``ep_poll_result`` without its pointers: count, data_len, state (small ints, no allocation: the
# pointers are read only when the arrays grow, the only time they can move, see ep_poll_result).
POLL_SIZES_LAYOUT = struct_of(PollResult, skip=("events", "data"))

# ---------------------------------------------------------------------------------------------
# The one declarative table: every exported C function, its restype and argtypes.
# A test parses include/eploop.h and fails if a function is missing here or its types differ.
# ``hot``: called once per loop step or per send, so also made without argtypes (see the module
# docstring); the binding calls a hot function only through ``hot``, every other one through
# ``lib``: one way to call each C function.


class LoopPtr(c_void_p):
    """``struct ep_loop *``: the opaque loop pointer (a distinct type, so a loop argument is not
    any ``void *``)."""


class Signature(NamedTuple):
    restype: Any
    argtypes: tuple[Any, ...]
    hot: bool = False


LOOP = LoopPtr
ID = c_uint64  # ep_id
HOT = True

_SIGNATURES: dict[str, tuple[Any, ...]] = {
    "ep_loop_new": (LOOP, ()),
    "ep_loop_free": (None, (LOOP,)),
    "ep_register": (c_int64, (LOOP, c_int, c_uint32, POINTER(Callbacks), c_void_p)),
    "ep_listen": (
        c_int64,
        (LOOP, c_char_p, c_uint16, c_int, c_uint32, POINTER(Callbacks), c_void_p),
    ),
    "ep_listen_unix": (c_int64, (LOOP, c_char_p, c_int, c_uint32, POINTER(Callbacks), c_void_p)),
    "ep_connect": (
        c_int64,
        (LOOP, c_char_p, c_uint16, c_uint32, c_uint32, POINTER(Callbacks), c_void_p),
    ),
    "ep_connect_unix": (
        c_int64,
        (LOOP, c_char_p, c_uint32, c_uint32, POINTER(Callbacks), c_void_p),
    ),
    "ep_udp_bind": (
        c_int64,
        (LOOP, c_char_p, c_uint16, c_uint32, POINTER(DatagramCallbacks), c_void_p),
    ),
    "ep_udp_connect": (c_int, (LOOP, ID, c_char_p, c_uint16)),
    "ep_sendto": (c_int, (LOOP, ID, c_void_p, c_size_t, c_void_p, c_uint32), HOT),
    "ep_udp_join": (c_int, (LOOP, ID, c_char_p, c_char_p)),
    "ep_udp_leave": (c_int, (LOOP, ID, c_char_p, c_char_p)),
    "ep_udp_set_option": (c_int, (LOOP, ID, c_int, c_int)),
    "ep_timer_start": (c_int64, (LOOP, c_uint64, c_uint64, TIMER_CB, c_void_p)),
    "ep_timer_cancel": (c_int, (LOOP, ID)),
    "ep_post": (c_int, (LOOP, POST_CB, c_void_p)),
    "ep_signal_start": (c_int64, (LOOP, c_int, c_uint32, SIGNAL_CB, c_void_p)),
    "ep_signal_stop": (c_int, (LOOP, ID)),
    "ep_run": (c_int, (LOOP,)),
    "ep_run_once": (c_int, (LOOP, c_int)),
    "ep_stop": (c_int, (LOOP,)),
    "ep_send": (c_int, (LOOP, ID, c_void_p, c_size_t), HOT),
    "ep_sendv": (c_int, (LOOP, ID, POINTER(IOVec), c_int)),
    "ep_send_nocopy": (c_int, (LOOP, ID, c_void_p, c_size_t, RELEASE_CB, c_void_p)),
    "ep_send_file": (c_int, (LOOP, ID, c_int, c_uint64, c_uint64)),
    "ep_shutdown": (c_int, (LOOP, ID)),
    "ep_close": (c_int, (LOOP, ID), HOT),
    "ep_abort": (c_int, (LOOP, ID), HOT),
    "ep_set_user": (c_int, (LOOP, ID, c_void_p)),
    "ep_get_user": (c_void_p, (LOOP, ID)),
    "ep_fd": (c_int, (LOOP, ID), HOT),
    "ep_local_port": (c_int, (LOOP, ID)),
    "ep_pause_reading": (c_int, (LOOP, ID), HOT),
    "ep_resume_reading": (c_int, (LOOP, ID), HOT),
    "ep_set_watermarks": (c_int, (LOOP, ID, c_size_t, c_size_t)),
    "ep_set_linger": (c_int, (LOOP, c_uint32)),
    "ep_set_idle_timeout": (c_int, (LOOP, ID, c_uint32)),
    "ep_set_keepalive": (c_int, (LOOP, ID, c_int, c_int, c_int)),
    "ep_set_user_timeout": (c_int, (LOOP, ID, c_uint32)),
    "ep_drain": (c_int, (LOOP, c_uint32)),
    "ep_get_stats": (c_int, (LOOP, POINTER(Stats), c_size_t)),
    "ep_set_callbacks": (c_int, (LOOP, ID, POINTER(Callbacks), c_void_p)),
    "ep_set_trace": (c_int, (LOOP, TRACE_CB, c_void_p)),
    "ep_trace_format": (c_int, (POINTER(TraceRecord), c_char_p, c_size_t)),
    "ep_poll": (c_int, (LOOP, c_int, POINTER(Commands), POINTER(PollResult)), HOT),
    "ep_poll_with": (c_int, (POINTER(PollArgs),), HOT),
    "ep_strerror": (c_char_p, (c_int,)),
    "ep_close_reason_name": (c_char_p, (c_int,)),
    "ep_version": (c_char_p, ()),
    "ep_loop_fd": (c_int, (LOOP,)),
    "ep_next_timeout": (c_int, (LOOP,)),
}
SIGNATURES: dict[str, Signature] = {name: Signature(*row) for name, row in _SIGNATURES.items()}

# Calls that wait in epoll_wait: made through the GIL-releasing handle.
BLOCKING = frozenset({"ep_run", "ep_run_once", "ep_poll", "ep_poll_with"})

# ---------------------------------------------------------------------------------------------
# Finding and loading the library


class LibraryLoadError(ImportError):
    """libeploop.so could not be loaded; the message names every path tried and why."""


def candidate_paths() -> list[Path]:
    """Where the library is looked for, in order.

    ``$EPLOOP_LIBRARY`` alone when it is set (an explicit choice is never silently replaced by
    another copy); otherwise the copy bundled inside the package, then the crate's
    ``target/release`` when the package is used straight from a source checkout.
    """
    override = os.environ.get(LIBRARY_ENV)
    if override:
        return [Path(override)]
    package_dir = Path(__file__).resolve().parent
    return [
        package_dir / LIBRARY_NAME,
        package_dir.parent.parent / "target" / "release" / LIBRARY_NAME,
    ]


def _load() -> tuple[ctypes.CDLL, ctypes.PyDLL, Path]:
    failures = []
    for path in candidate_paths():
        if not path.is_file():
            failures.append(f"  {path}: no such file")
            continue
        try:
            return ctypes.CDLL(str(path)), ctypes.PyDLL(str(path)), path
        except OSError as exc:
            failures.append(f"  {path}: {exc}")
    hint = (
        f"set {LIBRARY_ENV} to the path of {LIBRARY_NAME}, "
        "or reinstall the package with `pip install ./python-bindings` from the eploop checkout"
    )
    raise LibraryLoadError(
        f"cannot load {LIBRARY_NAME}; tried:\n" + "\n".join(failures) + f"\n{hint}"
    )


def compatible(library_version: str, package_version: str) -> bool:
    """Cargo's rule: versions agree on their leftmost non-zero component (0.1.x ~ 0.1.y)."""

    def key(version: str) -> tuple[int, ...]:
        parts = tuple(int(p) for p in version.split("-")[0].split(".")[:3])
        return parts[:1] if parts[0] != 0 else parts[:2]

    return key(library_version) == key(package_version)


# The hot functions, from the table's ``hot`` column.
HOT_NAMES = tuple(name for name, signature in SIGNATURES.items() if signature.hot)


class _Lib:
    """The C functions as attributes, each with its argtypes and restype set."""

    def __init__(self, nogil: ctypes.CDLL, gil: ctypes.PyDLL) -> None:
        for name, (restype, argtypes, _hot) in SIGNATURES.items():
            function = getattr(nogil if name in BLOCKING else gil, name)
            function.restype = restype
            function.argtypes = argtypes
            setattr(self, name, function)

    def __getattr__(self, name: str) -> Any:  # only reached for names missing from SIGNATURES
        raise AttributeError(f"{name} is not declared in eploop._ffi.SIGNATURES")


class _Hot:
    """The hot functions without argtypes (restype int, ctypes' default), from the same handles."""

    def __init__(self, nogil: ctypes.CDLL, gil: ctypes.PyDLL) -> None:
        for name in HOT_NAMES:
            # dll[name] makes a new function object: the declared one in `lib` keeps its argtypes
            setattr(self, name, (nogil if name in BLOCKING else gil)[name])


_nogil, _gil, library_path = _load()
lib: Any = _Lib(_nogil, _gil)
hot: Any = _Hot(_nogil, _gil)
library_version: str = lib.ep_version().decode()

if not compatible(library_version, __version__):
    raise LibraryLoadError(
        f"{library_path} is libeploop {library_version}, but this eploop package "
        f"{__version__} needs a compatible library ({__version__.rsplit('.', 1)[0]}.x); "
        f"rebuild with `pip install ./python-bindings` or point {LIBRARY_ENV} at a matching library"
    )


def strerror(code: int) -> str:
    """``ep_strerror``: the text for a negative error code."""
    text: bytes = lib.ep_strerror(code)
    return text.decode(errors="replace")
