#!/usr/bin/env bash
# The whole test suite: lint, types, then every test that runs on this machine
# (unit, integration, end-to-end with real servers and a real browser; GPU tests
# only where a GPU is present). Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."

./scripts/test-deps.sh || exit 1

.venv/bin/ruff check src tests scripts bench || exit 1
.venv/bin/ruff format --check src tests scripts bench || exit 1
.venv/bin/mypy || exit 1

.venv/bin/python -m pytest "$@"
status=$?
if [ "$status" -eq 5 ]; then  # pytest: no tests collected (e.g. a filter matched nothing)
  echo "pytest collected no tests" >&2
  exit 0
fi
exit "$status"
