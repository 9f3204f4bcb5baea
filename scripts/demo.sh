#!/usr/bin/env bash
# The quick start (no files needed): fine-tunes DAPT on generated shapes with main.py, evaluates
# it, writes one new generated cloud to a .ply file and classifies it with main.py
# --mode=predict; ends with the test accuracy and the prediction. Outputs in runs/quickstart/
# (a previous quick start there is replaced; a folder holding anything else is refused).
# Arguments go to python -m dapt_jax.demo.quickstart (e.g. --shape=cone, --config.FIELD=VALUE).
# The four-way backbone comparison is python -m dapt_jax.demo.compare (docs/demo-comparison.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh requirements.txt
exec .venv/bin/python -m dapt_jax.demo.quickstart "$@"
