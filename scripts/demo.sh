#!/usr/bin/env bash
# Sets up .venv if needed, then trains the small demo model on the embedded synthetic dataset
# (no files needed) and prints the final accuracy. Extra arguments go to main.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh requirements.txt
rm -rf runs/demo  # the demo starts afresh each time
exec .venv/bin/python main.py --config=configs/synthetic.py --workdir=runs/demo "$@"
