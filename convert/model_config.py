"""The model a conversion targets: its fields from `--config`, from a recorded config, or read
off the checkpoint's shapes."""
from __future__ import annotations

import importlib.util
import os
import pathlib
from typing import Any, Callable, Mapping

import numpy as np

from convert import keymap
from convert import methods
from convert.errors import ConvertError
from dapt_jax.models import release_keys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = 'configs/scanobjectnn.py:hardest'


def load_config(spec: str) -> Any:
  """Imports `path.py[:arg]` and returns its `get_config(arg)` (an ml_collections ConfigDict)."""
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise ConvertError(f'--config {spec}: no such file {path}')
  name = '_convert_config_' + pathlib.Path(path).stem
  try:
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    get_config = getattr(module, 'get_config')
    return get_config(arg) if arg else get_config()
  except ConvertError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (a user's file: report, don't crash)
    detail = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ConvertError(f'--config {spec}: {detail}') from None


def load_default(spec: str) -> Any:
  """The config `spec` (relative to the repository) used when no --config is given."""
  path, _, arg = spec.partition(':')
  if not (REPO_ROOT / path).is_file():
    raise ConvertError(f'no --config given and the default {spec} is not there; pass --config')
  return load_config(f'{REPO_ROOT / path}:{arg}')


def field(obj: Any, name: str) -> Any:
  """`obj[name]` or `obj.name`; None when absent."""
  if isinstance(obj, Mapping):
    return obj.get(name)
  return getattr(obj, name, None)


def section(cfg: Any) -> Any:
  """A config's `model` section; a section or a mapping of model fields as it is."""
  model = field(cfg, 'model')
  return cfg if model is None else model


def _fields(cfg: Any, required: tuple[str, ...], optional: tuple[str, ...],
            kind: str) -> dict[str, Any]:
  """The model section's `required` and present `optional` fields as a dict."""
  s, out = section(cfg), {}
  for name in required + optional:
    try:
      value = s[name] if isinstance(s, Mapping) else getattr(s, name)
    except (KeyError, AttributeError):
      if name in optional:
        continue
      raise ConvertError(f'the {kind}config has no model.{name}') from None
    out[name] = list(value) if name in required and isinstance(value, (tuple, list)) else value
  return out


def classifier_fields(cfg: Any) -> dict[str, Any]:
  """A classification config's model fields, with the PEFT method and its settings where the
  config has them (dapt_jax/models/peft)."""
  from dapt_jax.models import classifier  # pylint: disable=g-import-not-at-top
  from dapt_jax.models import peft  # pylint: disable=g-import-not-at-top
  return _fields(cfg, classifier.MODEL_FIELDS, ('peft',) + peft.option_fields(), '')


def mae_fields(cfg: Any) -> dict[str, Any]:
  """A pre-training config's model fields."""
  from dapt_jax.models import mae  # pylint: disable=g-import-not-at-top
  return _fields(cfg, mae.MODEL_FIELDS, (), 'pre-training ')


def segmenter_fields(cfg: Any) -> dict[str, Any]:
  """A segmentation config's model fields (its optional ones filled in)."""
  from dapt_jax.models import segmenter  # pylint: disable=g-import-not-at-top
  try:
    return segmenter.model_fields(section(cfg))
  except ValueError as e:
    raise ConvertError(f'the segmentation config: {e}') from None


def infer_fields(tensors: Mapping[str, np.ndarray], base: Mapping[str, Any], with_head: bool,
                 method: str) -> tuple[dict[str, Any], list[str]]:
  """Classifier fields read off a state dict in release keys; the rest taken from `base`.

  `method` is the PEFT method whose release keys the tensors have (its layout says which).

  Returns (fields, names of the fields inferred).
  Raises:
    ConvertError: the shapes do not determine the model (e.g. which tokens feed the head).
  """
  fields = dict(base)
  inferred = []

  def take(values: Mapping[str, Any]) -> None:
    fields.update(values)
    inferred.extend(values)

  width = next((int(tensors[key].shape[0]) for key in (
      'norm.weight', 'encoder.second_conv.3.bias', 'pos_embed.2.bias') if key in tensors), None)
  if width is not None:
    take({'trans_dim': width, 'encoder_dims': width})
  c = fields['trans_dim']
  blocks = {keymap.block_index(k) for k in tensors} - {None}
  if blocks:
    take({'depth': max(blocks) + 1})
  fc1 = tensors.get('blocks.blocks.0.mlp.fc1.weight')
  if fc1 is not None and fc1.ndim == 2:
    take({'mlp_ratio': float(fc1.shape[0]) / c})
  release = methods.RELEASES[method]
  take(_read_release(release.infer, tensors) if method == fields.get('peft', methods.DEFAULT)
       else {'peft': method, **_read_release(release.infer, tensors)})
  if c % fields['num_heads']:
    raise ConvertError(f'trans_dim {c} is not divisible by the default num_heads '
                       f'{fields["num_heads"]}; pass --config with the right num_heads')
  if with_head:
    last = tensors.get('cls_head_finetune.8.weight')
    first = tensors.get('cls_head_finetune.0.weight')
    if last is not None:
      take({'num_classes': int(last.shape[0])})
    if first is not None and first.ndim == 2 and release.infer_head is not None:
      take(_read_release(release.infer_head, int(first.shape[1]), c))
  return fields, inferred


def _read_release(infer: Callable[..., dict], *args: Any) -> dict[str, Any]:
  """A release's inference (its method's module) on `args`, its errors as ConvertErrors."""
  try:
    return infer(*args)
  except release_keys.ReleaseError as e:
    raise ConvertError(str(e)) from None
