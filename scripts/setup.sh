#!/usr/bin/env bash
# Creates .venv (Python 3.11+) and installs what the given requirements file lists.
# Usage: bash scripts/setup.sh requirements-test.txt
set -euo pipefail
cd "$(dirname "$0")/.."
req="${1:-requirements.txt}"
py="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
stamp=".venv/.installed-$(basename "$req")"
if [ ! -f "$stamp" ] || [ "$req" -nt "$stamp" ] || [ requirements.txt -nt "$stamp" ] \
    || [ requirements-onnx.txt -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -r "$req"
  if [ "$(basename "$req")" = requirements-test.txt ]; then  # the ONNX tests: see that file
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r requirements-onnx.txt
  fi
  touch "$stamp"
fi
