"""valgrind memcheck over cmd_server (and so over libeploop.so) through the tour of close paths:
no invalid access, no use of uninitialised memory, nothing definitely lost."""

from __future__ import annotations

import shutil

import pytest

from tour import tour

VALGRIND = ["valgrind", "--tool=memcheck", "--error-exitcode=99", "--leak-check=full",
            "--errors-for-leak-kinds=definite", "--show-leak-kinds=definite", "--track-origins=yes", "-q"]


def test_memcheck_tour(server, mode) -> None:
    if not shutil.which("valgrind"):
        pytest.fail("valgrind is not installed (CI must apt-get install valgrind)")
    srv = server(edge=mode == "edge", wrapper=VALGRIND, start_timeout=60)
    tour(srv, scale=3.0)
    rc = srv.wait_exit(60)
    assert rc == 0, f"valgrind reported errors (exit {rc}):\n{srv.stderr_text(8000)}"
    srv.finish()
