"""Fixtures for every eploop binding test."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def no_unraisable() -> Iterator[None]:
    """Fail any test during which Python reported an exception it could not raise."""
    seen: list[str] = []
    previous = sys.unraisablehook
    sys.unraisablehook = lambda hook_args: seen.append(
        f"{hook_args.err_msg}: {hook_args.exc_type.__name__}: {hook_args.exc_value}"
    )
    try:
        yield
    finally:
        sys.unraisablehook = previous
    assert seen == [], f"sys.unraisablehook fired: {seen}"
