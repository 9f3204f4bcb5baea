"""`main.py --mode=summary`: what a config will train, without data or computation.

The model is built from the config and its parameters traced by shape only (jax.eval_shape), so
the full-size model summarises in seconds on a CPU.
"""
from __future__ import annotations

from typing import Any

import jax

from dapt_jax import partition
from dapt_jax import tasks


def parameter_shapes(config: Any) -> dict:
  """{'params', 'batch_stats'} of jax.ShapeDtypeStruct for the config's model."""
  task = tasks.get_task(config)
  net = task.build_model()
  return jax.eval_shape(lambda key: task.init_variables(net, key), jax.random.PRNGKey(0))


def summarize(config: Any) -> str:
  """The parameter tables --mode=summary prints: per top-level module, then per module and the
  partition rule that matched it."""
  params = parameter_shapes(config)['params']
  rules = partition.rules_for(config)
  labels = partition.label_params(params, rules)
  counts = partition.count(params, labels)
  m = config.model
  method = m.get('peft', 'dapt')
  source = ('config.partition_rules' if config.get('partition_rules') is not None
            else f'partition.METHOD_RULES[{method!r}] (model.peft)')
  lines = [
      f'method: {method}; model: width {m.trans_dim}, depth {m.depth}, {m.num_heads} heads, '
      f'{m.num_group} groups of {m.group_size} points, {m.num_classes} classes; '
      f'{config.data.num_points} points per cloud',
      f'partition rules: {source}',
      '',
      partition.format_counts(counts),
      '',
      partition.format_rule_table(partition.rule_rows(params, rules)),
  ]
  if config.get('init_from'):
    lines += ['', f'init_from: {config.init_from} (not read by --mode=summary)']
  return '\n'.join(lines)
