"""Flax variables of a complete DAPT model → the release's PyTorch state dict.

The result is saved as `{'base_model': state_dict}`, which the PyTorch release's own loading
(`load_state_dict(..., strict=True)` on the `base_model` entry) accepts.
"""
from __future__ import annotations

import collections
import json
import os
from typing import Any, Mapping

import numpy as np

from convert import keymap
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


def variables_to_release_arrays(variables: Mapping[str, Mapping],
                                model_cfg: Any) -> collections.OrderedDict:
  """{release key: numpy array} for every tensor of the release's state dict.

  Args:
    variables: {'params', 'batch_stats'} of a complete model (every variable present).
    model_cfg: a config, its `model` section, or a mapping of model fields.
  Raises:
    ConvertError: a variable is missing, unexpected, or has the wrong shape.
  """
  fields = model_config.model_fields(model_cfg)
  method = fields.get('peft', 'dapt')
  if method not in keymap.RELEASE_METHODS:
    raise ConvertError(f'model.peft={method!r} has no release checkpoint layout to write (the '
                       f'project\'s own design); convertible: {", ".join(keymap.RELEASE_METHODS)}')
  shapes = model_config.variable_shapes(fields)
  try:
    entries = keymap.entries_for_variables(shapes, method)
  except ValueError as e:
    raise ConvertError(f'internal: {e}') from None
  have = {c: flatten(variables.get(c, {})) for c in ('params', 'batch_stats')}
  want = {c: flatten(shapes.get(c, {})) for c in ('params', 'batch_stats')}
  for c in have:
    extra = sorted(set(have[c]) - set(want[c]))
    if extra:
      raise ConvertError(f'{c}/{extra[0]} is not a variable of the configured model')
  missing = [e.name for e in entries if e.path not in have[e.collection]]
  if missing:
    more = f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''
    raise ConvertError(f'not a complete {keymap.METHOD_NAMES[method]} model: {missing[0]} is '
                       f'missing{more} (a converted '
                       'pre-training checkpoint has no adapters or head; train or convert a '
                       'fine-tuned model first)')
  out = collections.OrderedDict()
  for e in entries:
    value = np.asarray(have[e.collection][e.path])
    if value.shape != want[e.collection][e.path].shape:
      raise ConvertError(f'{e.name} has shape {value.shape}, the model needs '
                         f'{want[e.collection][e.path].shape}')
    for key in (e.torch_key,) + e.aliases:
      out[key] = e.to_torch(value.astype(np.float32))
      if e.kind == keymap.BATCH_NORM and e.path.endswith('/var'):
        counter = key[:-len('running_var')] + keymap.NUM_BATCHES_TRACKED
        out[counter] = np.array(0, np.int64)
  return out


def variables_to_torch_state_dict(variables: Mapping[str, Mapping],
                                  model_cfg: Any) -> collections.OrderedDict:
  """As `variables_to_release_arrays`, as torch tensors (float32; counters 0-d int64)."""
  torch = import_torch()
  arrays = variables_to_release_arrays(variables, model_cfg)
  return collections.OrderedDict((k, torch.from_numpy(np.array(v))) for k, v in arrays.items())


def fields_for(src_dir: str, config: str | None) -> dict[str, Any]:
  """The model of a converted checkpoint: `--config`, else the one its report recorded."""
  if not os.path.isdir(src_dir):
    raise ConvertError(f'{src_dir}: no such directory')
  if config is not None:
    return model_config.model_fields(model_config.load_config(config))
  run_config = os.path.join(src_dir, 'config.json')  # a training workdir records its config
  if os.path.isfile(run_config):
    with open(run_config) as f:
      return dict(json.load(f)['model'])
  report = pretrained.load_report(src_dir)
  if report is None or 'model' not in report:
    raise ConvertError(f'{src_dir} has no report.json saying which model it holds; pass --config')
  return dict(report['model'])


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


# ---------------------------------------------------------------------------------------------
# The masked autoencoder → Point-MAE's pre-training checkpoint layout (SPEC §6.5).


def mae_variables_to_arrays(variables: Mapping[str, Mapping],
                            fields: Mapping[str, Any] | None) -> collections.OrderedDict:
  """{checkpoint key: numpy array} for all 209 entries of Point-MAE's `base_model`, in its order
  (203 parameters, float32; BatchNorm statistics; `num_batches_tracked` as 0-d int64 zeros).

  Args:
    variables: {'params', 'batch_stats'} of a complete autoencoder.
    fields: its model fields (checked against the shapes), or None to take the shapes as given.
  Raises:
    ConvertError: a variable is missing, unexpected, or has the wrong shape.
  """
  try:
    entries = keymap.mae_entries_for_variables(variables)
  except ValueError as e:
    raise ConvertError(f'not a complete masked autoencoder: {e}') from None
  have = {c: flatten(variables.get(c, {})) for c in ('params', 'batch_stats')}
  want = None
  if fields is not None:
    shapes = model_config.mae_variable_shapes(fields)
    want = {c: flatten(shapes.get(c, {})) for c in ('params', 'batch_stats')}
  out = collections.OrderedDict()
  for e in entries:
    value = np.asarray(have[e.collection][e.path])
    if want is not None:
      if e.path not in want[e.collection]:
        raise ConvertError(f'{e.name} is not a variable of the configured model')
      if value.shape != want[e.collection][e.path].shape:
        raise ConvertError(f'{e.name} has shape {value.shape}, the model needs '
                           f'{want[e.collection][e.path].shape}')
    out[e.torch_key] = e.to_torch(value.astype(np.float32))
    if e.kind == keymap.BATCH_NORM and e.path.endswith('/var'):
      counter = e.torch_key[:-len('running_var')] + keymap.NUM_BATCHES_TRACKED
      out[counter] = np.array(0, np.int64)
  return out


def mae_fields_for(src_dir: str, config: str | None) -> dict[str, Any] | None:
  """The autoencoder's model fields: `--config`, the workdir's config.json, or the report's;
  None when none of them describes an autoencoder (the shapes are then taken as stored)."""
  if config is not None:
    cfg = model_config.load_config(config)
    if not model_config.is_pretrain_config(cfg):
      raise ConvertError(f'--config {config} is not a pre-training config, but {src_dir} holds '
                         'a masked autoencoder')
    return model_config.mae_model_fields(cfg)
  for name in ('config.json', pretrained.REPORT_FILE):
    path = os.path.join(src_dir, name)
    if os.path.isfile(path):
      with open(path) as f:
        recorded = json.load(f)
      if model_config.is_pretrain_config(recorded):
        return model_config.mae_model_fields(recorded)
  return None


# ---------------------------------------------------------------------------------------------
# The part-segmentation network → Point-MAE's segmentation checkpoint layout (SPEC §8.5).

SEG_CONTAINER = 'model_state_dict'  # where Point-MAE's segmentation code keeps its state dict


def seg_variables_to_arrays(variables: Mapping[str, Mapping],
                            fields: Mapping[str, Any]) -> collections.OrderedDict:
  """{checkpoint key: numpy array} of every tensor of a complete segmentation network, in the
  order of Point-MAE's `model_state_dict` (float32; `num_batches_tracked` as 0-d int64 zeros).
  With DAPT the DAPT release's names are used for the DAPT parts.

  Raises:
    ConvertError: a variable is missing, unexpected, or has the wrong shape.
  """
  shapes = model_config.seg_variable_shapes(fields)
  try:
    entries = keymap.seg_entries_for_variables(shapes)
  except ValueError as e:
    raise ConvertError(f'internal: {e}') from None
  have = {c: flatten(variables.get(c, {})) for c in ('params', 'batch_stats')}
  want = {c: flatten(shapes.get(c, {})) for c in ('params', 'batch_stats')}
  for c in have:
    extra = sorted(set(have[c]) - set(want[c]))
    if extra:
      raise ConvertError(f'{c}/{extra[0]} is not a variable of the configured segmentation '
                         'network')
  missing = [e.name for e in entries if e.path not in have[e.collection]]
  if missing:
    more = f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''
    raise ConvertError(f'not a complete segmentation network: {missing[0]} is missing{more} (a '
                       'converted backbone has no head; train or convert a fine-tuned model)')
  out = collections.OrderedDict()
  for e in entries:
    value = np.asarray(have[e.collection][e.path])
    if value.shape != want[e.collection][e.path].shape:
      raise ConvertError(f'{e.name} has shape {value.shape}, the model needs '
                         f'{want[e.collection][e.path].shape}')
    out[e.torch_key] = e.to_torch(value.astype(np.float32))
    if e.kind == keymap.BATCH_NORM and e.path.endswith('/var'):
      counter = e.torch_key[:-len('running_var')] + keymap.NUM_BATCHES_TRACKED
      out[counter] = np.array(0, np.int64)
  return out


def seg_fields_for(src_dir: str, config: str | None) -> dict[str, Any]:
  """The segmentation network of a converted checkpoint or workdir: `--config`, else the one its
  config.json / report.json records."""
  if config is not None:
    cfg = model_config.load_config(config)
    if not model_config.is_segmentation_config(cfg):
      raise ConvertError(f'--config {config} is not a segmentation config, but {src_dir} holds '
                         'a segmentation network')
    return model_config.seg_model_fields(cfg)
  for name in ('config.json', pretrained.REPORT_FILE):
    path = os.path.join(src_dir, name)
    if os.path.isfile(path):
      with open(path) as f:
        recorded = json.load(f)
      if model_config.is_segmentation_config(recorded):
        return model_config.seg_model_fields(recorded)
  raise ConvertError(f'{src_dir} records no segmentation model (no config.json or report.json '
                     'with one); pass --config configs/shapenetpart.py[:variant]')
