"""Converted checkpoints: the on-disk format `python -m convert` writes, and strict merging.

A converted checkpoint is a directory that is an orbax checkpoint of
`{'params': {...}, 'batch_stats': {...}}` holding only the tensors that came from the source
file (Flax paths of docs/architecture.md), plus `report.json` (what was loaded, ignored and left
freshly initialised, the source's layout and sha256, the model fields used).

`main.py --config.init_from=DIR` calls:
    loaded = pretrained.load_converted(DIR)
    variables, report = pretrained.merge_pretrained(variables, loaded)
"""
from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from dapt_jax import errors
from dapt_jax import partition

REPORT_FILE = 'report.json'
COLLECTIONS = ('params', 'batch_stats')


class PretrainedError(errors.UserError, ValueError):
  """A converted checkpoint that cannot be read or does not fit the model; one-line message."""


def _shape(x: Any) -> tuple[int, ...]:
  return tuple(int(d) for d in np.shape(x))


def save_converted(path: str | os.PathLike, variables: Mapping[str, Mapping], report: Mapping,
                   force: bool = False) -> None:
  """Writes `variables` ({'params', 'batch_stats'} of numpy arrays) and `report` to `path`.

  Everything is written into a temporary sibling directory first and renamed into place at the
  end, so a failure leaves nothing at `path`.

  Raises:
    PretrainedError: `path` exists (and not `force`), or writing failed.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top  (slow to import)
  dst = os.path.abspath(os.fspath(path))
  if os.path.lexists(dst) and not force:
    raise PretrainedError(f'{dst} already exists (pass --force to replace it)')
  parent = os.path.dirname(dst)
  if not os.path.isdir(parent):
    raise PretrainedError(f'{parent}: no such directory')
  tmp = os.path.join(parent, f'.{os.path.basename(dst)}.converting-{os.getpid()}')
  shutil.rmtree(tmp, ignore_errors=True)
  try:  # before orbax starts: a failed write inside it leaves threads waiting on barriers
    os.mkdir(tmp)
    os.rmdir(tmp)
  except OSError as e:
    raise PretrainedError(f'cannot write {dst}: {parent} is not writable '
                          f'({e.strerror or e})') from None
  tree = {c: {k: v for k, v in variables.get(c, {}).items()} for c in COLLECTIONS}
  # orbax cannot store an empty collection; load_converted restores it as {}.
  tree = {c: v for c, v in tree.items() if v}
  try:
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp, tree)
    checkpointer.wait_until_finished()
    with open(os.path.join(tmp, REPORT_FILE), 'w') as f:
      json.dump(report, f, indent=1)
      f.write('\n')
    if os.path.lexists(dst):
      old = dst + f'.replaced-{os.getpid()}'
      os.rename(dst, old)
      os.rename(tmp, dst)
      if os.path.isdir(old):
        shutil.rmtree(old, ignore_errors=True)
      else:
        os.remove(old)
    else:
      os.rename(tmp, dst)
  except PretrainedError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise PretrainedError(f'writing {dst} failed: {type(e).__name__}: {e}') from None
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def load_report(path: str | os.PathLike) -> dict | None:
  """The converter's report.json of a converted checkpoint, or None when there is none."""
  report = os.path.join(os.fspath(path), REPORT_FILE)
  if not os.path.isfile(report):
    return None
  try:
    with open(report) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise PretrainedError(f'{report}: unreadable ({e})') from None


def load_converted(path: str | os.PathLike, workdir_checkpoint: str = 'best') -> dict[str, dict]:
  """Restores a converted checkpoint: {'params': nested dict, 'batch_stats': nested dict}.

  `path` may also be a training workdir (main.py's --workdir): its `workdir_checkpoint` save is
  read ('best', else the last; or 'last').

  Leaves are numpy arrays; a collection the checkpoint does not hold comes back empty.

  Raises:
    PretrainedError: the directory is missing or is not a converted checkpoint.
  """
  src = os.path.abspath(os.fspath(path))
  if not os.path.isdir(src):
    raise PretrainedError(f'{src}: no such directory (make one with python -m convert)')
  from dapt_jax import checkpoints  # pylint: disable=g-import-not-at-top
  if checkpoints.is_workdir(src):  # a training run: its best (else last) checkpoint
    try:
      variables, _ = checkpoints.workdir_variables(src, workdir_checkpoint)
    except checkpoints.CheckpointError as e:
      raise PretrainedError(str(e)) from None
    return {c: dict(variables.get(c, {})) for c in COLLECTIONS}
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top  (slow to import)
  try:
    with errors.quiet_if_it_fails():
      restored = ocp.StandardCheckpointer().restore(src)
  except Exception as e:  # pylint: disable=broad-except
    detail = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
    raise PretrainedError(f'{src}: not a converted checkpoint ({detail})') from None
  if not isinstance(restored, Mapping) or set(restored) - set(COLLECTIONS):
    keys = sorted(restored) if isinstance(restored, Mapping) else type(restored).__name__
    raise PretrainedError(f'{src}: not a converted checkpoint (top-level entries {keys}; expected '
                          f'{" and/or ".join(COLLECTIONS)})')
  return {c: dict(restored.get(c, {})) for c in COLLECTIONS}


def merge_pretrained(variables: Mapping[str, Mapping],
                     loaded: Mapping[str, Mapping]) -> tuple[dict, dict]:
  """Overwrites the leaves of `variables` that `loaded` holds, strictly.

  Every loaded leaf must exist in `variables` with the same shape; leaves not loaded keep their
  initial values. Loaded values are cast to the variable's dtype (numpy leaves stay numpy).
  The one allow-list: the masked autoencoder's decoder side (`mae.PRETRAIN_ONLY_PREFIXES`), which
  a pre-trained backbone carries and a fine-tuning model lacks, is set aside as 'ignored'.

  Returns:
    (merged variables, report) where report = {'loaded': [...], 'freshly_initialised': [...],
    'ignored': [...]}, each a sorted list of `collection/path` names.
  Raises:
    PretrainedError: a loaded leaf the model lacks, or a shape mismatch (names the path and both
      shapes).
  """
  unknown = sorted(set(loaded) - set(COLLECTIONS))
  if unknown:
    raise PretrainedError(f'converted checkpoint has an unknown collection {unknown[0]!r}')
  from dapt_jax.models import mae  # pylint: disable=g-import-not-at-top
  merged, loaded_names, fresh_names, ignored_names = {}, [], [], []
  for collection in sorted(set(variables) | set(COLLECTIONS)):
    target = partition.flatten(variables.get(collection, {}))
    source = partition.flatten(loaded.get(collection, {}))
    pretrain_only = sorted(n for n in set(source) - set(target) if mae.is_pretrain_only(n))
    ignored_names += [f'{collection}/{n}' for n in pretrain_only]
    source = {n: v for n, v in source.items() if n not in pretrain_only}
    extra = sorted(set(source) - set(target))
    if extra:
      more = f' (and {len(extra) - 1} more)' if len(extra) > 1 else ''
      raise PretrainedError(f'converted checkpoint has {collection}/{extra[0]}, which this model '
                            f'does not have{more}; was it converted for another config?')
    out = {}
    for name, init in target.items():
      if name in source:
        value = source[name]
        if _shape(value) != _shape(init):
          raise PretrainedError(f'{collection}/{name}: the converted checkpoint has shape '
                                f'{_shape(value)} but the model needs {_shape(init)}')
        # Keep the leaf's kind: numpy stays numpy (host-side trees), anything else becomes jax.
        if isinstance(init, np.ndarray):
          out[name] = np.asarray(value, dtype=init.dtype)
        else:
          out[name] = jnp.asarray(value, dtype=init.dtype)
        loaded_names.append(f'{collection}/{name}')
      else:
        out[name] = init
        fresh_names.append(f'{collection}/{name}')
    if target or collection in variables:
      merged[collection] = partition.unflatten(out) if out else {}
  report = {'loaded': sorted(loaded_names), 'freshly_initialised': sorted(fresh_names),
            'ignored': sorted(ignored_names)}
  return merged, report


def describe_fresh(names: Sequence[str]) -> str:
  """One readable line for the `collection/path` names a load left at their initial values:
  top-level modules instead of leaves (a block's by its part), numbered copies folded:
  `cls_token, head, blocks_*/adapter (x12), batch_stats/head`."""
  groups: dict[str, set] = {}
  for name in names:
    collection, _, path = name.partition('/')
    parts = path.split('/')
    module = '/'.join(parts[:2]) if re.fullmatch(r'blocks_\d+', parts[0]) else parts[0]
    key = ('' if collection == 'params' else collection + '/') + module
    groups.setdefault(re.sub(r'(?<=_)\d+(?=/|$)', '*', key), set()).add(key)
  return ', '.join(g + (f' (x{len(m)})' if len(m) > 1 else '') for g, m in groups.items())
