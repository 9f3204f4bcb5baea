#!/usr/bin/env bash
# Sets up .venv if needed, then runs the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh requirements-test.txt
exec .venv/bin/python -m pytest -n 2 -q "$@"
