"""PyTorch `.pth` checkpoints ⇄ dapt-jax variables; run as `python -m convert` (see --help).

Modules: `pth_reader` (safe reading, no torch needed), `layouts` (finding the state dict and its
layout), `keymap` (Flax paths ⇄ release keys and transposes), `model_config` (the target model),
`from_torch` (.pth → Flax), `to_torch` (Flax → .pth), `__main__` (the command line).
"""
from convert.errors import ConvertError
from convert.errors import UnsafeCheckpointError
