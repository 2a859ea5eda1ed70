"""Must FAIL ``mypy --strict`` (checked by check.sh, run from .ci/run): a handler or handler
factory that is not one is a type error, not something the type checker waves through as
``Any``. Not a test module (pytest collects test_*.py only); never run."""

from __future__ import annotations

import eploop

with eploop.Loop() as loop:
    loop.connect(("127.0.0.1", 9), object())  # not a ConnectionHandler: no on_data
    loop.listen(("127.0.0.1", 0), object)  # a factory, but of things that are not handlers
    loop.listen(("127.0.0.1", 0), eploop.Handler())  # a handler where a factory is wanted
