"""Training checkpoints in a workdir, with orbax.

Layout under `WORKDIR/checkpoints/`:
  last/<step>/   the last `keep` saves: trainable params, optimizer state, BatchNorm statistics,
                 step, RNG key (item 'state') and epoch / data position / best metric (item 'meta')
  best/<step>/   the save with the best evaluation accuracy so far (same items)
  frozen/        the frozen parameters, written once when the run starts (they never change)

Orbax writes each save into a temporary folder (`<step>.orbax-checkpoint-tmp-*`) and renames it
when complete, so a kill during a save leaves the previous checkpoints intact; the temporary
folders of interrupted saves are removed when the workdir is opened again. A new best is written
before the save of `last` that records it, and the old best is dropped only once the new one is
complete, so the best checkpoint survives a kill at any moment. On resume the best metric comes
from the best checkpoint itself, never from a record of a save that did not complete.
"""
from __future__ import annotations

import logging
import os
import shutil
from typing import Any, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from dapt_jax import errors
from dapt_jax import partition

log = logging.getLogger('dapt_jax')
TMP_MARK = '.orbax-checkpoint-tmp'  # orbax's suffix for a save still in progress


class CheckpointError(errors.UserError, ValueError):
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
    if jax.process_index() == 0:
      remove_interrupted_saves(root)
    opts = lambda n: ocp.CheckpointManagerOptions(max_to_keep=n, create=True,
                                                  enable_async_checkpointing=False,
                                                  cleanup_tmp_directories=True)
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
    with errors.quiet_if_it_fails(), ocp.StandardCheckpointer() as ckptr:
      return ckptr.restore(self.frozen_dir, {'frozen': _abstract(template)})['frozen']

  # -- training state -------------------------------------------------------------------------

  def save(self, state, meta: dict, best: bool = False) -> None:
    """Saves host-side `state` (a TrainState) and `meta` (JSON-able) at `state.step`.

    With `best`, the best save is completed first: `last`'s meta, which names the best, is only
    written once the best checkpoint it names is on disk.
    """
    step = int(state.step)
    args = ocp.args.Composite(state=ocp.args.StandardSave(_state_to_tree(state)),
                              meta=ocp.args.JsonSave(meta))
    managers = ([self.best] if best else []) + [self.last]
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
      with errors.quiet_if_it_fails():
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError) as e:
      msg = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise CheckpointError(f'{manager.directory}/{step}: cannot restore into this config '
                            f'({msg})') from None
    meta = dict(restored['meta'])
    if which == 'last':
      meta = self._best_on_disk(meta)
    return _tree_to_state(restored['state'], template), meta

  def _best_on_disk(self, meta: dict) -> dict:
    """`meta` with the best metric of the best checkpoint that is actually on disk."""
    step = self.best.latest_step()
    if step is None:
      if meta.get('best_epoch', -1) >= 0:
        log.warning('The best checkpoint (epoch %s) is not on disk; the next evaluations choose '
                    'the best again.', meta['best_epoch'])
      return dict(meta, best_value=None, best_accuracy=-1.0, best_epoch=-1)
    try:
      best_meta = self.best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      best_meta = dict(best_meta['meta'])
    except (ValueError, KeyError, TypeError, OSError):
      return meta
    # 'best_value' is the task's best metric; checkpoints written before tasks had 'best_accuracy'.
    value = best_meta.get('best_value', best_meta.get('best_accuracy'))
    return dict(meta, best_value=value, best_accuracy=best_meta.get('best_accuracy', -1.0),
                best_epoch=best_meta.get('best_epoch', -1))

  def close(self) -> None:
    self.last.close()
    self.best.close()


def is_workdir(path: str) -> bool:
  """Whether `path` is a training workdir (holds checkpoints/last and checkpoints/frozen)."""
  root = os.path.join(path, 'checkpoints')
  return os.path.isdir(os.path.join(root, 'last')) and os.path.isdir(os.path.join(root, 'frozen'))


def remove_interrupted_saves(root: str) -> list[str]:
  """Removes the temporary folders of saves a kill interrupted under `root` (checkpoints/)."""
  removed = []
  for folder in (root, os.path.join(root, 'last'), os.path.join(root, 'best')):
    if not os.path.isdir(folder):
      continue
    for name in os.listdir(folder):
      if TMP_MARK in name:
        shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
        removed.append(os.path.join(folder, name))
  if removed:
    log.info('Removed %d interrupted save(s): %s', len(removed), ', '.join(removed))
  return removed


def find_checkpoint(workdir: str, which: str = 'best') -> tuple[str, int]:
  """(`which` or 'last' when `which` has no complete save, step) of a workdir's newest save."""
  root = os.path.abspath(os.path.join(workdir, 'checkpoints'))
  for name in (which, 'last'):
    d = os.path.join(root, name)
    steps = sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []
    if steps:
      return name, steps[-1]
  raise CheckpointError(f'{workdir}: the training workdir has no checkpoint yet')


def workdir_variables(workdir: str, which: str = 'best') -> tuple[dict, int]:
  """{'params', 'batch_stats'} (numpy) of a workdir's best save (or last, if none is best),
  read without knowing the model: the saved trees are plain nested dicts.

  Returns (variables, step).
  """
  root = os.path.abspath(os.path.join(workdir, 'checkpoints'))
  name, step = find_checkpoint(workdir, which)
  chosen = os.path.join(root, name)
  with errors.quiet_if_it_fails(), ocp.StandardCheckpointer() as ckptr:
    state = ckptr.restore(os.path.join(chosen, str(step), 'state'))
    frozen = ckptr.restore(os.path.join(root, 'frozen'))['frozen']
  to_np = lambda t: jax.tree.map(np.asarray, dict(t)) if t else {}
  params = partition.merge(to_np(state['trainable']), to_np(frozen))
  return {'params': params, 'batch_stats': to_np(state['batch_stats'])}, step


def _shape_tree(tree: Any) -> Any:
  """Orbax metadata → the same nesting with shape tuples as leaves."""
  if isinstance(tree, Mapping):
    return {str(k): _shape_tree(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_shape_tree(v) for v in tree]
  return tuple(int(d) for d in getattr(tree, 'shape', ()) or ())


def _metadata(path: str) -> dict:
  absl_log = logging.getLogger('absl')  # orbax warns before we can say it in one line
  level = absl_log.level
  absl_log.setLevel(logging.ERROR)
  with errors.quiet_if_it_fails():
    try:
      with ocp.StandardCheckpointer() as ckptr:
        meta = ckptr.metadata(path)
    finally:
      absl_log.setLevel(level)
    meta = getattr(meta, 'item_metadata', meta)
    if meta is None:  # orbax logged a read error and gave up
      raise CheckpointError(f'{path}: not a converted checkpoint or a training workdir (no '
                            'checkpoint metadata in it)')
  return _shape_tree(getattr(meta, 'tree', meta))


def read_variable_shapes(path: str) -> dict[str, dict[str, tuple[int, ...]]]:
  """{'params': {flat path: shape}, 'batch_stats': {...}} of a converted checkpoint or a training
  workdir, read from its metadata (no array is loaded).

  Raises:
    CheckpointError: neither a converted checkpoint nor a training workdir, or unreadable.
  """
  src = os.path.abspath(path)
  try:
    if is_workdir(src):
      name, step = find_checkpoint(src, 'best')
      root = os.path.join(src, 'checkpoints')
      state = _metadata(os.path.join(root, name, str(step), 'state'))
      frozen = _metadata(os.path.join(root, 'frozen')).get('frozen', {})
      params = {**partition.flatten(frozen), **partition.flatten(state.get('trainable', {}))}
      return {'params': params, 'batch_stats': partition.flatten(state.get('batch_stats', {}))}
    tree = _metadata(src)
  except CheckpointError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (orbax raises many kinds)
    detail = ' '.join(str(e).split())[:160] or type(e).__name__
    raise CheckpointError(f'{src}: not a converted checkpoint or a training workdir '
                          f'({detail})') from None
  if not isinstance(tree, dict) or set(tree) - {'params', 'batch_stats'}:
    keys = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
    raise CheckpointError(f'{src}: not a converted checkpoint (top-level entries {keys}; '
                          'expected params and/or batch_stats)')
  return {c: partition.flatten(tree.get(c, {})) for c in ('params', 'batch_stats')}
