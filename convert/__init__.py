"""PyTorch `.pth` checkpoints ⇄ dapt-jax variables; run as `python -m convert` (see --help).

Modules: `pth_reader` (safe reading, no torch needed), `layouts` (finding the state dict and its
layout), `kinds` (each layer kind's leaves and transposes), `methods` (the PEFT methods' release
keys, read through the method registry: each method defines its own `RELEASE`, on the plain
Point-MAE rows of dapt_jax/models/release_keys.py), `keymap` (each family's key map),
`model_config` (configs and model fields), `families` (one table per model family), `from_torch`
(.pth → Flax), `to_torch` (Flax → .pth), `__main__` (the command line).
"""
from convert.errors import ConvertError
from convert.errors import UnsafeCheckpointError
