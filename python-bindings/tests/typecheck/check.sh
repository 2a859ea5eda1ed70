#!/usr/bin/env bash
# Typing checks (run by .ci/run): the package and its examples pass `mypy --strict`, and
# not_a_handler.py, which passes non-handlers as handlers, fails it with exactly the errors it
# was written for. (Python 3.9 compatibility is the 3.9 test run's: mypy no longer targets 3.9.)
# usage: python-bindings/tests/typecheck/check.sh PYTHON   (an interpreter with mypy installed)
set -euo pipefail
python=${1:?usage: check.sh PYTHON}
cd "$(dirname "$0")/../.."  # python-bindings: `eploop` is the source tree

"$python" -m mypy --strict eploop examples

if output=$("$python" -m mypy --strict tests/typecheck/not_a_handler.py 2>&1); then
  echo "typecheck: not_a_handler.py passed mypy --strict: handlers are not type-checked" >&2
  exit 1
fi
errors=$(grep -c 'error: Argument 2 to "\(connect\|listen\)" of "Loop" has incompatible type' \
  <<<"$output" || true)
if [ "$errors" != 3 ]; then
  echo "typecheck: not_a_handler.py failed mypy, but not with the 3 expected errors:" >&2
  echo "$output" >&2
  exit 1
fi
echo "typecheck: eploop and examples pass mypy --strict; non-handlers are rejected"
