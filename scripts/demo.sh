#!/usr/bin/env bash
# The demo (no files needed). With the project's pre-trained demo backbone in
# assets/pretrained/synthetic_small (made by scripts/pretrain_demo_backbone.sh), it fine-tunes the
# small demo classifier on generated shapes four ways and prints the comparison: DAPT on that
# backbone, linear probing and full fine-tuning on it, and DAPT on a random backbone; outputs in
# runs/demo/comparison.{json,md,png}. Without that backbone it trains DAPT on a random backbone
# (configs/synthetic.py) and prints the accuracy. Extra arguments go to the command run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh requirements.txt
rm -rf runs/demo  # the demo starts afresh each time
if [ -d assets/pretrained/synthetic_small ]; then
  exec .venv/bin/python -m dapt_jax.demo.compare "$@"
fi
exec .venv/bin/python main.py --config=configs/synthetic.py --workdir=runs/demo "$@"
