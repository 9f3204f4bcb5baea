"""The model families, found by name, and the pieces they share.

Every family module (`classifier`, `segmenter`, `mae`) has the same entry points:

    check_config(model_section) -> build arguments   (raises ModelConfigError, one line)
    build_model(model_section, axis_name=None) -> flax module
    init_variables(net, key, num_points) -> {'params', 'batch_stats'}

and the fine-tuning families also `trainable_rules(method)` (the method's rules with the family's
head). They share one encoder (`encoder.py`: tokenizer, patch encoder, class token, positions,
the blocks of `transformer.py`, final norm) with one PEFT method in it (`peft/`).
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from dapt_jax.models.config import ModelConfigError

FAMILIES = ('classifier', 'segmenter', 'mae')
# The family each task trains (config.task → family).
TASK_FAMILIES = {'classification': 'classifier', 'segmentation': 'segmenter', 'pretrain': 'mae'}


def get_family(name: str) -> ModuleType:
  """The family module `name` (one of FAMILIES)."""
  if name not in FAMILIES:
    raise ModelConfigError(f'model family {name!r}: must be one of {", ".join(FAMILIES)}')
  return importlib.import_module(f'dapt_jax.models.{name}')


def family_of(config: Any) -> ModuleType:
  """The family a run's config trains (by config.task, default classification)."""
  task = config.get('task', 'classification') if hasattr(config, 'get') else 'classification'
  if task not in TASK_FAMILIES:
    raise ModelConfigError(f'config.task={task!r}: must be one of {sorted(TASK_FAMILIES)}')
  return get_family(TASK_FAMILIES[task])
