"""include/eploop.h is usable from C++ and from strict ISO C11."""

from __future__ import annotations

import subprocess

import pytest

USES_THE_API = r"""
#include <eploop.h>

static void on_close(ep_loop *loop, ep_id id, ep_close_reason reason, int err, void *user) {
  (void)loop; (void)id; (void)reason; (void)err; (void)user;
}

int main(void) {
  ep_callbacks callbacks = {0, 0, 0, on_close};
  ep_loop *loop = ep_loop_new();
  int64_t listener = ep_listen(loop, "127.0.0.1", 0, 0, EP_EDGE, &callbacks, 0);
  int rc = listener < 0 ? (int)listener : ep_run_once(loop, 0);
  const char *message = ep_strerror(rc);
  ep_loop_free(loop);
  return message == 0;
}
"""

COMPILERS = {
    "c++11": ["g++", "-x", "c++", "-std=c++11"],
    "c++17": ["g++", "-x", "c++", "-std=c++17"],
    "c11-pedantic": ["gcc", "-x", "c", "-std=c11", "-pedantic"],
}


@pytest.mark.parametrize("dialect", list(COMPILERS))
def test_header_compiles(h, tmp_path, dialect):
    header = h.INCLUDE_DIR / "eploop.h"
    assert header.exists(), f"{header} is missing: run `make lib`"
    compiler = COMPILERS[dialect]
    h.require_tool(compiler[0])
    source = tmp_path / "uses_eploop.txt"
    source.write_text(USES_THE_API)
    result = subprocess.run(
        [*compiler, "-Wall", "-Wextra", "-Werror", "-fsyntax-only", f"-I{h.INCLUDE_DIR}",
         str(source)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
