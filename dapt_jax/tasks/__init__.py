"""Tasks: what differs between classification, segmentation and pre-training.

The training loop (`dapt_jax.train`), the step wrappers and data parallelism (`dapt_jax.steps`),
checkpoints and the data stack are shared; a task supplies its model, loss, evaluation outputs,
metrics and data sources. `config.task` names it.

    task = tasks.get_task(config)
    net = task.build_model(axis_name=steps.AXIS)
"""
from __future__ import annotations

import importlib

from dapt_jax.tasks.base import Task
from dapt_jax.tasks.base import TaskError

# name -> 'module:Class', imported on first use so a task's dependencies load only when used.
TASKS = {
    'classification': 'dapt_jax.tasks.classification:ClassificationTask',
    'pretrain': 'dapt_jax.tasks.pretrain:PretrainTask',
    'segmentation': 'dapt_jax.tasks.segmentation:SegmentationTask',
}


def get_task(config) -> Task:
  """The task object for `config.task` (default 'classification')."""
  name = config.get('task', 'classification') if hasattr(config, 'get') else 'classification'
  if name not in TASKS:
    raise TaskError(f'config.task={name!r}: must be one of {sorted(TASKS)}')
  module, cls = TASKS[name].split(':')
  return getattr(importlib.import_module(module), cls)(config)
