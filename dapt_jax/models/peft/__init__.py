"""The PEFT methods: one module each, registered by name here (SPEC §9).

`config.model.peft` names one; `get(name)` gives its `Method` class, whose `from_config(cfg,
backbone)` makes an instance with the option values of a model section. Every model family
(classifier, segmenter; the masked autoencoder uses `full`) builds its encoder from it, so every
method works for every task, and `python -m convert` reads each method's release checkpoint
keys (`Method.RELEASE`) from here. Adding a method: a module with a `Method` subclass
(dapt_jax/models/peft/base.py says what it may define: options and their checks, block and
sequence additions, trainable rules, release keys) and its name in METHODS; no other code
changes (its tests and docs aside).

| method     | added to the frozen Point-MAE backbone (what trains besides cls token/pos + head) |
|------------|-----------------------------------------------------------------------------------|
| `dapt`     | `dapt.py`: scale-shifts, a Dynamic Adapter per block, one internal prompt per block |
| `full`     | nothing; everything trains                                                         |
| `linear`   | nothing; only the class token, its position and the head train                     |
| `vpt_deep` | `vpt_deep.py`: per block, prompts with their own positions appended to the sequence |
| `idpt`     | `idpt.py`: a DGCNN prompt module before one block (the last by default)            |
| `pointgst` | `pointgst.py`: a graph-spectral adapter (PCSA) in every block                      |
| `lora`     | `lora.py`: low-rank updates of the attention's qkv and proj                         |
| `adapter`  | `adapter.py`: two bottleneck adapters per block (after attention, after the MLP)   |
"""
from __future__ import annotations

import importlib
from dapt_jax.models.config import ModelConfigError
from dapt_jax.models.peft import base

# The registry: each name is the module dapt_jax/models/peft/<name>.py.
METHODS = ('dapt', 'full', 'linear', 'vpt_deep', 'idpt', 'pointgst', 'lora', 'adapter')


def get(name: str) -> type[base.Method]:
  """The Method class registered as `name`."""
  if name not in METHODS:
    raise ModelConfigError(f'model.peft={name!r}: must be one of {", ".join(METHODS)}')
  return importlib.import_module(f'dapt_jax.models.peft.{name}').Method


def option_fields() -> tuple[str, ...]:
  """Every method's option fields (config.model fields), in registry order."""
  fields = []
  for name in METHODS:
    fields += [f for f in get(name).OPTIONS if f not in fields]
  return tuple(fields)
