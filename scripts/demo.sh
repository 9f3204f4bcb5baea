#!/usr/bin/env bash
# The demo (about 5 minutes on 2 CPU cores after installation, no files needed): fine-tunes the
# small demo classifier on generated shapes four ways and prints the comparison — DAPT on the
# backbone this project pre-trained (assets/pretrained/synthetic_small), linear probing and full
# fine-tuning on it, and DAPT on a random backbone. Writes runs/demo/comparison.{json,md,png}
# (replaced on each run). Extra arguments go to python -m dapt_jax.demo.compare (--epochs, --rows,
# --backbone, --out). Re-make the backbone with scripts/pretrain_demo_backbone.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh requirements.txt
exec .venv/bin/python -m dapt_jax.demo.compare "$@"
