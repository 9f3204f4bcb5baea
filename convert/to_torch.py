"""Flax variables of a complete model of any family → its PyTorch checkpoint's state dict, driven
by the family tables of convert/families.py.

A classifier is written in its PEFT method's release layout as `{'base_model': state_dict}`, a
masked autoencoder in Point-MAE's pre-training layout (the same container), a segmentation
network as `{'model_state_dict': ...}`: what each release's own loading (`load_state_dict(...,
strict=True)`) accepts.
"""
from __future__ import annotations

import collections
import itertools
import json
import os
from typing import Any, Mapping

import numpy as np

from convert import families
from convert import methods
from convert import model_config
from convert.errors import ConvertError
from dapt_jax import pretrained
from dapt_jax.partition import flatten


def import_torch() -> Any:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ConvertError('writing a .pth needs PyTorch: pip install torch==2.13.0') from None
  return torch


def variables_to_arrays(family: families.Family, variables: Mapping[str, Mapping],
                        fields: Mapping[str, Any] | None) -> collections.OrderedDict:
  """{checkpoint key: numpy array} for every tensor of the family's checkpoint, in its order
  (float32; BatchNorm `num_batches_tracked` as 0-d int64 zeros).

  Args:
    family: the model's family.
    variables: {'params', 'batch_stats'} of a complete model (every variable present).
    fields: its model fields; None (where the family has no record) takes the shapes as stored.
  Raises:
    ConvertError: a variable is missing, unexpected, or has the wrong shape.
  """
  method = family.method(fields or {})
  if method not in methods.RELEASES:
    raise ConvertError(f'model.peft={method!r} has no release checkpoint layout to write (the '
                       f'project\'s own design); convertible: {", ".join(methods.RELEASES)}')
  what = family.what(fields or {})
  shapes = variables if fields is None else family.shapes(fields)
  try:
    entries = family.entries(shapes, method)
  except ValueError as e:
    raise ConvertError(f'not a complete {what}: {e}' if fields is None else f'internal: {e}'
                       ) from None
  have = {c: flatten(variables.get(c, {})) for c in ('params', 'batch_stats')}
  want = {c: flatten(shapes.get(c, {})) for c in ('params', 'batch_stats')}
  for c in have:
    extra = sorted(set(have[c]) - set(want[c]))
    if extra:
      raise ConvertError(f'{c}/{extra[0]} is not a variable of the configured {what}')
  missing = [e.name for e in entries if e.path not in have[e.collection]]
  if missing:
    more = f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''
    raise ConvertError(f'not a complete {what}: {missing[0]} is missing{more} '
                       f'({family.incomplete})')
  out = collections.OrderedDict()
  for e in entries:
    value = np.asarray(have[e.collection][e.path])
    if value.shape != want[e.collection][e.path].shape:
      raise ConvertError(f'{e.name} has shape {value.shape}, the model needs '
                         f'{want[e.collection][e.path].shape}')
    for key, counter in itertools.zip_longest((e.torch_key,) + e.aliases, e.counters):
      out[key] = e.to_torch(value.astype(np.float32))
      if counter:
        out[counter] = np.array(0, np.int64)
  return out


def variables_to_torch_state_dict(variables: Mapping[str, Mapping],
                                  model_cfg: Any) -> collections.OrderedDict:
  """As `variables_to_arrays` for the variables' own family, as torch tensors.

  Args:
    variables: {'params', 'batch_stats'} of a complete model.
    model_cfg: a config, its `model` section or model fields; None for a masked autoencoder
      whose shapes are taken as stored.
  """
  torch = import_torch()
  family = families.for_variables(variables)
  fields = None if model_cfg is None else family.fields(model_cfg)
  return collections.OrderedDict((k, torch.from_numpy(np.array(v)))
                                 for k, v in variables_to_arrays(family, variables, fields).items())


def fields_for(family: families.Family, src_dir: str,
               config: str | None) -> dict[str, Any] | None:
  """The model of a converted checkpoint or workdir: `--config`, else the one its config.json or
  report.json records; None where neither does and the family takes the shapes as stored."""
  if not os.path.isdir(src_dir):
    raise ConvertError(f'{src_dir}: no such directory')
  what = family.what({})
  if config is not None:
    cfg = model_config.load_config(config)
    if families.for_config(cfg) is not family:
      raise ConvertError(f'--config {config} is not a {family.kind} config, but {src_dir} holds '
                         f'a {what}')
    return family.fields(cfg)
  for name in ('config.json', pretrained.REPORT_FILE):  # a training workdir records its config
    path = os.path.join(src_dir, name)
    if os.path.isfile(path):
      try:
        with open(path) as f:
          recorded = json.load(f)
      except (OSError, ValueError) as e:
        raise ConvertError(f'{path}: unreadable ({e})') from None
      if 'model' in recorded and families.for_config(recorded) is family:
        return family.fields(recorded)
  if family.no_record is None:
    return None
  raise ConvertError(family.no_record.format(src=src_dir))


def write_pth(state_dict: Mapping[str, Any], dst: str, force: bool,
              container: str = 'base_model') -> None:
  """Saves `{container: state_dict}` at `dst` atomically (temporary file, then rename)."""
  torch = import_torch()
  dst = os.path.abspath(dst)
  if os.path.lexists(dst) and not force:
    raise ConvertError(f'{dst} already exists (pass --force to replace it)')
  if os.path.isdir(dst):
    raise ConvertError(f'{dst} is a directory')
  parent = os.path.dirname(dst)
  if not os.path.isdir(parent):
    raise ConvertError(f'{parent}: no such directory')
  tmp = os.path.join(parent, f'.{os.path.basename(dst)}.writing-{os.getpid()}')
  try:
    torch.save({container: collections.OrderedDict(state_dict)}, tmp)
    os.replace(tmp, dst)
  except OSError as e:
    raise ConvertError(f'writing {dst} failed: {e}') from None
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
