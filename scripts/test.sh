#!/usr/bin/env bash
# Sets up .venv if needed, then runs the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh requirements-test.txt
# --dist loadscope: each test module runs whole on one worker, so its module-scoped fixtures
# (trained runs, converted references) are built once, not once per worker.
# --no-loadscope-reorder: modules in collection order (tests/conftest.py puts the longest first),
# not by test count, so no long module starts last while the other worker idles.
exec .venv/bin/python -m pytest -n 2 --dist loadscope --no-loadscope-reorder -q "$@"
