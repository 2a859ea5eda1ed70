"""Fixtures for the reliability suite (fast tier). See README.md in this directory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from relharness import BuildError, Server, build, start_cmd_server  # noqa: E402


@pytest.fixture(scope="session")
def bins() -> dict[str, Path]:
    """cmd_server and faultshim.so, compiled with gcc into tests/reliability/build/."""
    try:
        return build()
    except BuildError as e:
        pytest.fail(f"cannot build the reliability test programs: {e}", pytrace=False)


@pytest.fixture
def server(bins):
    """Factory: server(*args, edge=False, faults=None, ...) starts cmd_server; tests end it with
    .finish() (which asserts the oracle); anything left running is killed at teardown."""
    started: list[Server] = []

    def start(*args: str, **kw) -> Server:
        s = start_cmd_server(bins, *args, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill()


@pytest.fixture(params=["level", "edge"])
def mode(request) -> str:
    return request.param


@pytest.fixture
def net():
    """Two fresh hosts (network namespaces) for this test, deleted afterwards whatever happens;
    the test is skipped, with the reason printed, where namespaces cannot be created."""
    import netns

    why = netns.unavailable()
    if why:
        print(f"SKIP network-namespace tests: {why}")
        pytest.skip(f"network namespaces unavailable: {why}")
    netns.sweep()
    pair = netns.NetPair()
    try:
        yield pair
    finally:
        pair.close()
