"""The binding's surface: the C declarations, loading, versions, errors, buffers, registration."""

from __future__ import annotations

import array
import contextlib
import ctypes
import errno
import os
import re
import socket
import subprocess
import sys
import time
import pytest
from bindings_support import (
    CHILD_ENV,
    REPO,
    TIMEOUT,
    Events,
    LoopThread,
    Recorder,
    connect,
    recv_exactly,
    serving,
)

import eploop
from eploop import _ffi

HEADER = REPO / "include" / "eploop.h"

C_TYPES = {
    "void": None,
    "int": ctypes.c_int,
    "int64_t": ctypes.c_int64,
    "uint16_t": ctypes.c_uint16,
    "uint32_t": ctypes.c_uint32,
    "size_t": ctypes.c_size_t,
    "ep_id": ctypes.c_uint64,
    "struct ep_loop *": _ffi.LoopPtr,
    "const char *": ctypes.c_char_p,
    "const void *": ctypes.c_void_p,
    "void *": ctypes.c_void_p,
    "const struct ep_callbacks *": ctypes.POINTER(_ffi.Callbacks),
    "uint64_t": ctypes.c_uint64,
    "ep_timer_cb": _ffi.TIMER_CB,
    "ep_post_cb": _ffi.POST_CB,
    "ep_signal_cb": _ffi.SIGNAL_CB,
    "struct ep_stats *": ctypes.POINTER(_ffi.Stats),
    "const struct ep_commands *": ctypes.POINTER(_ffi.Commands),
    "const uint8_t *": ctypes.c_void_p,
    "int *": ctypes.POINTER(ctypes.c_int),
    "struct ep_poll_result *": ctypes.POINTER(_ffi.PollResult),
    "struct ep_poll_args *": ctypes.POINTER(_ffi.PollArgs),
    "ep_trace_cb": _ffi.TRACE_CB,
    "const struct ep_trace_record *": ctypes.POINTER(_ffi.TraceRecord),
    "char *": ctypes.c_char_p,
    "const struct iovec *": ctypes.POINTER(_ffi.IOVec),
    "ep_release_fn": _ffi.RELEASE_CB,
    "const struct ep_datagram_callbacks *": ctypes.POINTER(_ffi.DatagramCallbacks),
    "const struct sockaddr *": ctypes.c_void_p,
    "socklen_t": ctypes.c_uint32,
}


def c_type(declaration: str, named: bool) -> str:
    """'const struct ep_callbacks *cbs' -> 'const struct ep_callbacks *' (canonical spacing)."""
    words = declaration.replace("*", " * ").split()
    return " ".join(words[:-1] if named else words)


def header_prototypes() -> dict[str, tuple[str, list[str]]]:
    """Every ep_* function declared in include/eploop.h: name -> (return type, [param types])."""
    text = re.sub(r"/\*.*?\*/|//[^\n]*", "", HEADER.read_text(), flags=re.S)
    prototypes = {}
    for match in re.finditer(r"([A-Za-z_][\w \t*]*?)\s*\b(ep_\w+)\s*\(([^()]*)\)\s*;", text):
        return_type, name, params = match.groups()
        types = [c_type(p, named=True) for p in params.split(",") if p.strip() not in ("", "void")]
        prototypes[name] = (c_type(return_type, named=False), types)
    return prototypes


def test_every_exported_function_is_in_the_table_with_its_c_types() -> None:
    prototypes = header_prototypes()
    assert len(prototypes) >= 15, f"the header parser found too little: {sorted(prototypes)}"
    missing = sorted(set(prototypes) - set(_ffi.SIGNATURES))
    assert missing == [], (
        f"exported by include/eploop.h but not declared in _ffi.SIGNATURES: {missing}"
    )
    for name, (return_type, params) in prototypes.items():
        restype, argtypes, _hot = _ffi.SIGNATURES[name]
        assert restype == C_TYPES[return_type], f"{name}: restype vs {return_type}"
        expected = [C_TYPES[p] for p in params]
        assert list(argtypes) == expected, f"{name}: argtypes vs ({', '.join(params)})"


def test_the_table_declares_nothing_the_header_lacks() -> None:
    extra = sorted(set(_ffi.SIGNATURES) - set(header_prototypes()))
    assert extra == [], f"declared in _ffi.SIGNATURES but not in include/eploop.h: {extra}"


FIELD_TYPES = {
    "uint32_t": ctypes.c_uint32,
    "uint64_t": ctypes.c_uint64,
    "int": ctypes.c_int,
    "ep_id": ctypes.c_uint64,
    "size_t": ctypes.c_size_t,
    "void *": ctypes.c_void_p,
    "const uint8_t *": ctypes.c_void_p,
    "const struct ep_event *": ctypes.POINTER(_ffi.Event),
    "int64_t": ctypes.c_int64,
    "const struct ep_command *": ctypes.POINTER(_ffi.Command),
    "int *": ctypes.POINTER(ctypes.c_int),
    "struct ep_loop *": ctypes.c_void_p,
    "const struct ep_commands *": ctypes.POINTER(_ffi.Commands),
    "struct ep_poll_result": _ffi.PollResult,
}
STRUCTS = {
    "ep_callbacks": _ffi.Callbacks,
    "ep_datagram_callbacks": _ffi.DatagramCallbacks,
    "ep_stats": _ffi.Stats,
    "ep_command": _ffi.Command,
    "ep_commands": _ffi.Commands,
    "ep_event": _ffi.Event,
    "ep_poll_result": _ffi.PollResult,
    "ep_poll_args": _ffi.PollArgs,
    "ep_trace_record": _ffi.TraceRecord,
}


def header_structs() -> dict[str, list[tuple[str, str]]]:
    """Every struct typedef in the header: name -> [(field, C type)]; function pointers: 'fn'."""
    text = re.sub(r"/\*.*?\*/|//[^\n]*", "", HEADER.read_text(), flags=re.S)
    structs = {}
    for name, body in re.findall(r"typedef struct (\w+) \{(.*?)\} \1;", text, flags=re.S):
        fields = []
        for declaration in body.split(";"):
            declaration = " ".join(declaration.split())
            if not declaration:
                continue
            if pointer := re.match(r".*\(\s*\*\s*(\w+)\s*\)", declaration):
                fields.append((pointer.group(1), "fn"))
            elif array := re.fullmatch(r"(.+?)\s*(\w+)\[(\d+)\]", declaration):
                fields.append(
                    (array.group(2), f"{c_type(array.group(1), named=False)}[{array.group(3)}]")
                )
            else:
                fields.append(
                    (declaration.replace("*", " * ").split()[-1], c_type(declaration, named=True))
                )
        structs[name] = fields
    return structs


def test_every_struct_matches_its_ctypes_mirror() -> None:
    structs = header_structs()
    assert set(structs) == set(STRUCTS), f"header structs vs mirrors: {set(structs) ^ set(STRUCTS)}"
    for name, mirror in STRUCTS.items():
        fields = structs[name]
        assert [f for f, _ in fields] == [f for f, *_ in mirror._fields_], name
        assert len(fields) == len(mirror._fields_), f"{name}: field count"
        for (field, c_field_type), (_, ctypes_type) in zip(fields, mirror._fields_):
            if c_field_type == "fn":
                assert issubclass(ctypes_type, ctypes._CFuncPtr), f"{name}.{field}"
            elif c_field_type.endswith("]"):
                base, count = c_field_type[:-1].split("[")
                assert ctypes_type._type_ == FIELD_TYPES[base] and ctypes_type._length_ == int(
                    count
                )
            else:
                assert ctypes_type == FIELD_TYPES[c_field_type], f"{name}.{field}: {c_field_type}"


def test_blocking_calls_release_the_gil_and_the_rest_keep_it() -> None:
    assert {"ep_run", "ep_run_once", "ep_poll", "ep_poll_with"} == _ffi.BLOCKING
    for name in _ffi.SIGNATURES:
        keeps_gil = bool(getattr(_ffi.lib, name)._flags_ & ctypes._FUNCFLAG_PYTHONAPI)
        assert keeps_gil == (name not in _ffi.BLOCKING), name


def test_the_hot_calls_are_the_same_functions_without_argtypes() -> None:
    for name in _ffi.HOT_NAMES:
        declared, hot = getattr(_ffi.lib, name), getattr(_ffi.hot, name)
        assert hot.argtypes is None and hot.restype is ctypes.c_int, name
        assert declared.restype is ctypes.c_int, f"{name}: the hot call assumes an int result"
        assert (
            ctypes.cast(hot, ctypes.c_void_p).value == ctypes.cast(declared, ctypes.c_void_p).value
        )
        assert hot._flags_ == declared._flags_, f"{name}: both keep (or release) the GIL alike"


def test_every_constant_matches_the_header() -> None:
    text = HEADER.read_text()
    defines = dict(re.findall(r"^#define (EP_[A-Z_]+) (-?\d+)$", text, flags=re.M))
    mirrored = {name: value for name, value in vars(_ffi).items() if name.startswith("EP_")}
    assert len(defines) >= 20, f"the header parser found too little: {defines}"
    for name, value in mirrored.items():
        assert name in defines, f"_ffi.{name} is not #defined in include/eploop.h"
        assert int(defines[name]) == value, (
            f"_ffi.{name} = {value}, the header says {defines[name]}"
        )


def test_ids_with_high_bits_reach_the_library_intact() -> None:
    """Ids carry a generation in their upper 32 bits; the calls made without argtypes must pass
    all 64 (on LP64 an id goes as a pointer-sized byref(), see eploop._registration._id_arg)."""
    ours, theirs = socket.socketpair()
    with ours, theirs, eploop.Loop() as loop:
        conn = loop.register(ours, eploop.Handler())
        assert conn.id >= 2**32
        assert conn.fileno() == ours.fileno()  # ep_fd, a hot call
        assert conn.send(b"ping") is True  # ep_send, a hot call
        theirs.settimeout(TIMEOUT)
        assert theirs.recv(4) == b"ping"
        conn.abort()
        with pytest.raises(eploop.StaleError):
            while True:
                loop.run_once(0)
                conn.send(b"after on_close")


def test_close_reasons_print_as_the_library_names_them() -> None:
    for reason in eploop.CloseReason:
        assert str(reason) == _ffi.lib.ep_close_reason_name(reason.value).decode()


def test_versions_agree() -> None:
    # (A regex, not tomllib: the suite runs on Python 3.9 too.)
    match = re.search(r'^version = "([^"]+)"', (REPO / "Cargo.toml").read_text(), flags=re.M)
    assert match, "no version in Cargo.toml"
    cargo = match.group(1)
    assert eploop.__version__ == cargo
    assert eploop.library_version == cargo
    assert _ffi.compatible("0.1.7", "0.1.0")
    assert not _ffi.compatible("0.2.0", "0.1.0")
    assert _ffi.compatible("1.4.0", "1.0.2")
    assert not _ffi.compatible("2.0.0", "1.9.9")


def test_a_bad_library_path_names_every_path_tried(tmp_path) -> None:
    bogus = tmp_path / "nothing-here.so"
    result = subprocess.run(
        [sys.executable, "-c", "import eploop"],
        env={**CHILD_ENV, "EPLOOP_LIBRARY": str(bogus)},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode != 0
    assert "LibraryLoadError" in result.stderr and str(bogus) in result.stderr


def test_a_library_that_is_not_eploop_is_refused(tmp_path) -> None:
    not_eploop = tmp_path / "libnot.so"
    not_eploop.write_bytes(b"\x7fELF garbage")
    result = subprocess.run(
        [sys.executable, "-c", "import eploop"],
        env={**CHILD_ENV, "EPLOOP_LIBRARY": str(not_eploop)},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode != 0 and str(not_eploop) in result.stderr


def test_default_lookup_order_lists_the_package_copy_then_the_checkout(monkeypatch) -> None:
    monkeypatch.delenv("EPLOOP_LIBRARY", raising=False)
    paths = _ffi.candidate_paths()
    assert paths[0].parent.name == "eploop" and paths[0].name == "libeploop.so"
    assert paths[1].parts[-3:] == ("target", "release", "libeploop.so")
    monkeypatch.setenv("EPLOOP_LIBRARY", "/x/y.so")
    assert [str(p) for p in _ffi.candidate_paths()] == ["/x/y.so"]


def test_close_reason_prints_its_event_log_name() -> None:
    assert str(eploop.CloseReason.PEER_EOF) == "peer_eof"
    assert f"{eploop.CloseReason.LOOP_FREED}" == "loop_freed"
    assert eploop.CloseReason.PEER_RESET == 2


def test_errors_are_oserrors_with_errno_and_strerror() -> None:
    with socket.socket() as taken, eploop.Loop() as loop:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError) as info:
            loop.listen(("127.0.0.1", taken.getsockname()[1]), eploop.Handler)
    assert isinstance(info.value, eploop.EploopError)
    assert info.value.errno == errno.EADDRINUSE
    assert info.value.code == -errno.EADDRINUSE
    assert "in use" in info.value.strerror.lower()


def test_a_bad_host_is_einval() -> None:
    with eploop.Loop() as loop, pytest.raises(eploop.EploopError) as info:
        loop.listen(("not-an-address", 0), eploop.Handler)
    assert info.value.errno == errno.EINVAL


def test_calls_on_a_closed_connection_raise_stale_error() -> None:
    events = Events()
    handlers: list[Recorder] = []

    def factory() -> Recorder:
        handlers.append(Recorder(events))
        return handlers[-1]

    with serving(factory) as server:
        with connect(server.port):
            events.wait_count("accept", 1)
        events.wait_count("close", 1)
    conn = handlers[0].conn
    assert conn.closed
    with pytest.raises(eploop.StaleError) as info:
        conn.send(b"late")
    assert info.value.errno == -_ffi.EP_ESTALE
    conn.close()  # idempotent
    conn.abort()


def test_send_accepts_every_bytes_like_object() -> None:
    payloads = [
        b"bytes\x00",
        bytearray(b"bytearray\x00"),
        memoryview(b"..readonly view\x00..")[2:-2],
        memoryview(bytearray(b"..writable view\x00.."))[2:-2],
        array.array("B", b"array\x00"),
        b"",
        bytearray(),
    ]
    expected = b"".join(bytes(p) for p in payloads)

    class Sender(eploop.Handler):
        def on_accept(self) -> None:
            for payload in payloads:
                assert self.conn.send(payload) is True
            self.conn.close()

    with serving(Sender) as server, connect(server.port) as client:
        assert recv_exactly(client, len(expected) + 1) == expected


def test_send_refuses_non_contiguous_buffers() -> None:
    failures: list[BaseException] = []

    class Sender(eploop.Handler):
        def on_accept(self) -> None:
            try:
                self.conn.send(memoryview(b"abcdef")[::2])
            except BufferError as exc:
                failures.append(exc)
            self.conn.close()

    with serving(Sender) as server, connect(server.port) as client:
        assert client.recv(10) == b""
    assert len(failures) == 1


def test_flow_control_reports_the_high_water_mark_and_on_writable() -> None:
    events = Events()

    class Producer(Recorder):
        def on_accept(self) -> None:
            self.conn.set_watermarks(1024, 4096)
            sent = 1024
            while self.conn.send(b"x" * 1024):
                sent += 1024
            self.events.add("above high water", sent)

    with serving(lambda: Producer(events)) as server, connect(server.port) as client:
        events.wait_count("above high water", 1)
        assert not events.of("writable")
        total = 0
        client.settimeout(0.05)  # the last bytes may arrive before on_writable is recorded
        deadline = time.monotonic() + TIMEOUT
        while not events.of("writable"):
            assert time.monotonic() < deadline, "on_writable never came"
            with contextlib.suppress(socket.timeout):  # (TimeoutError from 3.10 on)
                total += len(client.recv(65536))
        assert total > 4096


def test_register_borrows_a_socket_and_never_closes_it() -> None:
    events = Events()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        with eploop.Loop() as loop:
            conn = loop.register(ours, Recorder(events))
            assert isinstance(conn, eploop.Connection)
            assert conn.fileno() == ours.fileno()
            theirs.sendall(b"ping")
            while not events.of("data"):
                loop.run_once(TIMEOUT)
            conn.close()
            while not events.of("close"):
                loop.run_once(TIMEOUT)
        assert events.of("data") == [("data", conn.id, b"ping")]
        assert events.of("close") == [("close", conn.id, eploop.CloseReason.LOCAL, 0)]
        os.fstat(ours.fileno())  # still open: the loop did not close our socket
        assert ours.getblocking()  # and its blocking mode is back
        assert theirs.recv(10) == b""  # close() sent FIN, as a graceful close must


def test_register_an_int_fd_hands_it_over() -> None:
    events = Events()
    read_fd, write_fd = os.pipe()
    with eploop.Loop() as loop:
        conn = loop.register(read_fd, Recorder(events))
        os.write(write_fd, b"through a pipe\x00")
        os.close(write_fd)
        loop.run()  # returns once the pipe's EOF ended the only registration
    assert b"".join(e[2] for e in events.of("data")) == b"through a pipe\x00"
    assert events.of("close") == [("close", conn.id, eploop.CloseReason.PEER_EOF, 0)]
    with pytest.raises(OSError):
        os.fstat(read_fd)  # the loop owned it and closed it


def test_listen_adopts_a_listening_socket_object() -> None:
    events = Events()
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        loop = eploop.Loop()
        listener = loop.register(listening, lambda: Recorder(events, echo=True))
        assert isinstance(listener, eploop.Listener) and listener.port == port
        runner = LoopThread(loop).start()
        try:
            with connect(port) as client:
                client.sendall(b"hi")
                assert recv_exactly(client, 2) == b"hi"
        finally:
            runner.finish()
        os.fstat(listening.fileno())


def test_listen_refuses_a_socket_that_is_not_listening() -> None:
    with socket.socket() as plain, eploop.Loop() as loop, pytest.raises(ValueError):
        loop.listen(plain, eploop.Handler)


def test_run_returns_when_nothing_is_registered() -> None:
    with eploop.Loop() as loop:
        loop.run()
        assert loop.run_once(0) == eploop.RunResult.EMPTY


def test_run_once_times_out_with_more() -> None:
    with eploop.Loop() as loop:
        loop.listen(("127.0.0.1", 0), eploop.Handler)
        assert loop.run_once(0.01) == eploop.RunResult.MORE
        loop.stop()
        assert loop.run_once(0) == eploop.RunResult.STOPPED


def test_run_from_inside_a_handler_is_refused() -> None:
    errors: list[BaseException] = []

    class Reentrant(eploop.Handler):
        def on_accept(self) -> None:
            try:
                self.conn.loop.run()
            except eploop.EploopError as exc:
                errors.append(exc)
            self.conn.close()

    with serving(Reentrant) as server, connect(server.port) as client:
        assert client.recv(1) == b""
    assert len(errors) == 1 and errors[0].errno == -_ffi.EP_EBUSY


def test_a_closed_loop_refuses_work_and_close_is_idempotent() -> None:
    loop = eploop.Loop()
    loop.close()
    loop.close()
    assert loop.closed
    loop.stop()  # harmless
    with pytest.raises(ValueError):
        loop.listen(("127.0.0.1", 0), eploop.Handler)
    with pytest.raises(ValueError):
        loop.run()


def test_listen_on_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.fail("this machine has no IPv6: the test needs ::1")
    events = Events()
    with eploop.Loop() as loop:
        listener = loop.listen(("::1", 0), lambda: Recorder(events, echo=True))
        runner = LoopThread(loop, close=False).start()
        with socket.create_connection(("::1", listener.port), timeout=TIMEOUT) as client:
            try:
                client.sendall(b"v6")
                assert recv_exactly(client, 2) == b"v6"
                events.wait_count("accept", 1)
            finally:
                runner.finish()  # (only the loop's own thread may call into it while it runs)
            conn = loop.connections[0]
            assert conn.peername[:2] == client.getsockname()[:2]
            assert conn.sockname[1] == listener.port
