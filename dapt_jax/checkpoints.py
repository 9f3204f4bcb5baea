"""Training checkpoints in a workdir, with orbax.

Layout under `WORKDIR/checkpoints/`:
  last/<step>/   the last `keep` saves: trainable params, optimizer state, BatchNorm statistics,
                 step, RNG key (item 'state') and epoch / data position / best metric (item 'meta')
  best/<step>/   the save with the best evaluation accuracy so far (same items)
  frozen/        the frozen parameters, written once when the run starts (they never change)

Orbax writes each save into a temporary folder and renames it when complete, so a kill during a
save leaves the previous checkpoints intact.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from dapt_jax import partition


class CheckpointError(ValueError):
  """A checkpoint that cannot be restored into this run; one-line message."""


def _state_to_tree(state) -> dict:
  """TrainState (host arrays) → a plain dict orbax can write (optimizer state as a leaf list)."""
  return {
      'step': np.asarray(state.step),
      'trainable': state.trainable,
      'batch_stats': state.batch_stats,
      'opt_state': [np.asarray(x) for x in jax.tree.leaves(state.opt_state)],
      'rng': np.asarray(jax.random.key_data(state.rng)
                        if jax.dtypes.issubdtype(state.rng.dtype, jax.dtypes.prng_key)
                        else state.rng),
  }


def _tree_to_state(tree: dict, template):
  opt_leaves, treedef = jax.tree.flatten(template.opt_state)
  if len(tree['opt_state']) != len(opt_leaves):
    raise CheckpointError('checkpoint optimizer state does not match this config '
                          f'({len(tree["opt_state"])} vs {len(opt_leaves)} arrays)')
  return template.replace(
      step=tree['step'], trainable=tree['trainable'], batch_stats=tree['batch_stats'],
      opt_state=jax.tree.unflatten(treedef, tree['opt_state']), rng=tree['rng'])


def _abstract(tree: Any) -> Any:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), tree)


class Checkpoints:
  """The run's checkpoint managers (last k, best) and the frozen parameters."""

  def __init__(self, workdir: str, keep: int = 2):
    root = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    self.frozen_dir = os.path.join(root, 'frozen')
    opts = lambda n: ocp.CheckpointManagerOptions(max_to_keep=n, create=True,
                                                  enable_async_checkpointing=False)
    self.last = ocp.CheckpointManager(os.path.join(root, 'last'), options=opts(max(keep, 1)),
                                      item_names=('state', 'meta'))
    self.best = ocp.CheckpointManager(os.path.join(root, 'best'), options=opts(1),
                                      item_names=('state', 'meta'))

  # -- frozen parameters ----------------------------------------------------------------------

  def save_frozen(self, frozen: Any) -> None:
    """Writes the frozen parameters once; later calls are no-ops."""
    if os.path.exists(self.frozen_dir):
      return
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(self.frozen_dir, {'frozen': frozen})
      ckptr.wait_until_finished()

  def restore_frozen(self, template: Any) -> Any:
    if not os.path.exists(self.frozen_dir):
      raise CheckpointError(f'{self.frozen_dir}: missing (the workdir is incomplete)')
    with ocp.StandardCheckpointer() as ckptr:
      return ckptr.restore(self.frozen_dir, {'frozen': _abstract(template)})['frozen']

  # -- training state -------------------------------------------------------------------------

  def save(self, state, meta: dict, best: bool = False) -> None:
    """Saves host-side `state` (a TrainState) and `meta` (JSON-able) at `state.step`."""
    step = int(state.step)
    args = ocp.args.Composite(state=ocp.args.StandardSave(_state_to_tree(state)),
                              meta=ocp.args.JsonSave(meta))
    managers = [self.last] + ([self.best] if best else [])
    for manager in managers:
      if manager.latest_step() != step:
        manager.save(step, args=args)
      manager.wait_until_finished()

  def latest_step(self, which: str = 'last') -> Optional[int]:
    return getattr(self, which).latest_step()

  def restore(self, template, which: str = 'last', step: Optional[int] = None):
    """(state, meta) from the latest (or given) save of `which` ('last' or 'best')."""
    manager = getattr(self, which)
    step = manager.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f'no {which!r} checkpoint in {manager.directory}')
    target = _abstract(_state_to_tree(template))
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError) as e:
      msg = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise CheckpointError(f'{manager.directory}/{step}: cannot restore into this config '
                            f'({msg})') from None
    return _tree_to_state(restored['state'], template), dict(restored['meta'])

  def close(self) -> None:
    self.last.close()
    self.best.close()


def is_workdir(path: str) -> bool:
  """Whether `path` is a training workdir (holds checkpoints/last and checkpoints/frozen)."""
  root = os.path.join(path, 'checkpoints')
  return os.path.isdir(os.path.join(root, 'last')) and os.path.isdir(os.path.join(root, 'frozen'))


def workdir_variables(workdir: str, which: str = 'best') -> tuple[dict, int]:
  """{'params', 'batch_stats'} (numpy) of a workdir's best save (or last, if none is best),
  read without knowing the model: the saved trees are plain nested dicts.

  Returns (variables, step).
  """
  root = os.path.abspath(os.path.join(workdir, 'checkpoints'))
  step, chosen = None, None
  for name in (which, 'last'):
    d = os.path.join(root, name)
    steps = sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []
    if steps:
      step, chosen = steps[-1], d
      break
  if step is None:
    raise CheckpointError(f'{workdir}: the training workdir has no checkpoint yet')
  with ocp.StandardCheckpointer() as ckptr:
    state = ckptr.restore(os.path.join(chosen, str(step), 'state'))
    frozen = ckptr.restore(os.path.join(root, 'frozen'))['frozen']
  to_np = lambda t: jax.tree.map(np.asarray, dict(t)) if t else {}
  params = partition.merge(to_np(state['trainable']), to_np(frozen))
  return {'params': params, 'batch_stats': to_np(state['batch_stats'])}, step
