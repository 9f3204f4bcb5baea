"""Which weights a run starts from and which it evaluates.

    net, variables, labels = weights.build(config, task)       # fresh, merged with init_from
    variables, origin = weights.for_eval(config, workdir, variables)   # best checkpoint, else init_from

Shared by training (`dapt_jax.train`), evaluation, prediction, the segmentation figure and t-SNE,
so they all read a workdir the same way.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import jax
import numpy as np

from dapt_jax import checkpoints as ckpt_lib
from dapt_jax import errors
from dapt_jax import partition
from dapt_jax import pretrained
from dapt_jax import steps

log = logging.getLogger('dapt_jax')


class WeightsError(errors.UserError):
  """Nothing to evaluate: no checkpoint in the workdir and no init_from; one line for the user."""


def build(config: Any, task: Any) -> tuple[Any, dict, Any]:
  """(net with the device axis, initial variables, partition labels) of `task`'s model.

  The variables are the task's fresh initialisation (key `config.seed`) with
  `config.init_from` merged in strictly (`pretrained.merge_pretrained`).
  """
  net = task.build_model(axis_name=steps.AXIS)
  key = jax.random.PRNGKey(config.seed)
  variables = task.init_variables(net.clone(axis_name=None), key)
  variables = jax.tree.map(np.asarray, variables)
  if config.init_from:
    loaded = pretrained.load_converted(config.init_from)
    variables, report = pretrained.merge_pretrained(variables, loaded)
    fresh = report.get('freshly_initialised', [])
    # validate.py has refused any frozen parameter left fresh: what is listed here trains.
    shown = f': {pretrained.describe_fresh(fresh)}' if fresh else ''
    log.info('Loaded %d tensors from %s; %d start from their initial values%s',
             len(report['loaded']), config.init_from, len(fresh), shown)
  labels = partition.label_params(variables['params'], partition.rules_for(config))
  return net, variables, labels


def shaped(task: Any) -> tuple[Any, dict]:
  """(net without the device axis, zero variables of the model's shapes): a template to restore
  a workdir's checkpoint into, without initialising (compiling) the whole network once more."""
  net = task.build_model()
  shapes = jax.eval_shape(lambda k: task.init_variables(net, k), jax.random.PRNGKey(0))
  return net, jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes)


def for_eval(config: Any, workdir: Optional[str], variables: dict) -> tuple[dict, str]:
  """(variables to evaluate, where they came from): the workdir's best checkpoint if it has
  one (its last, with a warning, if no evaluation saved a best), else `config.init_from`
  (already merged into `variables` by `build`)."""
  if workdir and ckpt_lib.is_workdir(workdir):
    try:
      loaded, step = ckpt_lib.workdir_variables(workdir, 'best')
      which, _ = ckpt_lib.find_checkpoint(workdir, 'best')
    except ckpt_lib.CheckpointError:
      loaded = None
    if loaded is not None:
      variables, _ = pretrained.merge_pretrained(variables, loaded)
      if which == 'best':
        return variables, f'{workdir} (best checkpoint, step {step})'
      log.warning('%s has no best checkpoint (no evaluation saved one yet): evaluating its last '
                  'checkpoint, step %d.', workdir, step)
      return variables, f'{workdir} (no best checkpoint: the last one, step {step})'
  if config.init_from:
    return variables, config.init_from
  raise WeightsError(f'nothing to evaluate: {workdir} has no checkpoint and no '
                     '--config.init_from was given')


def load_for_eval(config: Any, workdir: Optional[str], task: Any) -> tuple[Any, dict, str]:
  """(net without the device axis, variables, origin) to evaluate outside the training loop.

  A training workdir's checkpoint holds every variable, so the model is only shaped (`shaped`);
  otherwise (init_from alone) it is initialised and merged as training does.
  """
  if workdir and ckpt_lib.is_workdir(workdir):
    net, variables = shaped(task)
  else:
    net, variables, _ = build(config, task)
    net = net.clone(axis_name=None)
  variables, origin = for_eval(config, workdir, variables)
  return net, variables, origin
