#!/usr/bin/env bash
# Pre-trains the demo's small backbone on generated shapes (offline) and writes it to
# assets/pretrained/synthetic_small with the command, seed and git commit recorded beside it.
# Re-running resumes an interrupted run (runs/pretrain_demo). Extra arguments go to
# python -m dapt_jax.demo.pretrain_backbone (e.g. --seed 3 --out /tmp/backbone --force).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh requirements.txt
exec .venv/bin/python -m dapt_jax.demo.pretrain_backbone "$@"
