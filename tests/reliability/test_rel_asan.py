"""AddressSanitizer: libeploop.so built with -Zsanitizer=address (target/asan) under a cmd_server
built with gcc -fsanitize=address, through the tour of close paths and a fault-injected echo.
Any invalid access aborts the server; LeakSanitizer fails its exit status on a leak."""

from __future__ import annotations

import pytest

from relharness import BuildError, build, build_asan_library, first_mismatch, pattern, start_cmd_server
from test_rel_faults import PROFILES, echo_roundtrip
from tour import tour

# The fault shim is not instrumented: let it load before the ASan runtime.
ASAN_ENV = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=86:verify_asan_link_order=0"}


@pytest.fixture(scope="module")
def asan_bins() -> dict:
    try:
        build_asan_library()
        return build(asan=True)
    except BuildError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.mark.parametrize("edge", [False, True], ids=["level", "edge"])
def test_asan_tour(asan_bins, edge: bool) -> None:
    srv = start_cmd_server(asan_bins, edge=edge, env=ASAN_ENV, start_timeout=30)
    try:
        tour(srv, scale=2.0)
        rc = srv.wait_exit(30)
        assert rc == 0, f"AddressSanitizer reported (exit {rc}):\n{srv.stderr_text(8000)}"
        srv.finish()
    finally:
        srv.kill()


def test_asan_echo_under_faults(asan_bins, tmp_path) -> None:
    srv = start_cmd_server(asan_bins, edge=True, env=ASAN_ENV,
                           faults={"FS_SEED": "11", **PROFILES["everything"]}, start_timeout=30)
    try:
        payload = pattern(5, 1024 * 1024)
        echo, how, _ = echo_roundtrip(srv.port, payload, seed=3)
        assert how == "eof" and first_mismatch(echo, payload) == -1 and len(echo) == len(payload)
        srv.wait_until(lambda o: o.closes >= 1, 10, "close")
        rc = srv.stop()
        assert rc == 0, f"AddressSanitizer reported (exit {rc}):\n{srv.stderr_text(8000)}"
        srv.finish()
    finally:
        srv.kill()
