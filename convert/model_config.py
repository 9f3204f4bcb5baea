"""The model a conversion targets: from `--config`, or inferred from the checkpoint's shapes."""
from __future__ import annotations

import importlib.util
import os
import pathlib
from typing import Any, Mapping

import numpy as np

from convert import keymap
from convert.errors import ConvertError

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


def model_fields(cfg: Any) -> dict[str, Any]:
  """A config's `model` section (or a mapping of model fields) as a plain JSON-able dict."""
  from dapt_jax.models import classifier as model_lib  # pylint: disable=g-import-not-at-top
  section = cfg.model if hasattr(cfg, 'model') else cfg
  out = {}
  for field in model_lib.MODEL_FIELDS:
    try:
      value = section[field] if isinstance(section, Mapping) else getattr(section, field)
    except (KeyError, AttributeError):
      raise ConvertError(f'the config has no model.{field}') from None
    out[field] = list(value) if isinstance(value, (tuple, list)) else value
  # The PEFT method and its settings (dapt_jax/models/peft), where the config has them.
  from dapt_jax.models import peft  # pylint: disable=g-import-not-at-top
  for field in ('peft',) + peft.option_fields():
    try:
      out[field] = section[field] if isinstance(section, Mapping) else getattr(section, field)
    except (KeyError, AttributeError):
      pass
  return out


def default_model_fields() -> dict[str, Any]:
  path, _, arg = DEFAULT_CONFIG.partition(':')
  full = REPO_ROOT / path
  if not full.is_file():
    raise ConvertError(f'no --config given and the default {DEFAULT_CONFIG} is not there; pass '
                       '--config')
  return model_fields(load_config(f'{full}:{arg}'))


def infer_model_fields(tensors: Mapping[str, np.ndarray], base: Mapping[str, Any],
                       with_head: bool, method: str = 'dapt') -> tuple[dict[str, Any], list[str]]:
  """Model fields read off a state dict in release keys; the rest taken from `base`.

  `method` is the PEFT method of a complete fine-tuned checkpoint (its layout says which).

  Returns (fields, names of the fields inferred).
  Raises:
    ConvertError: the shapes do not determine the model (e.g. which tokens feed the head).
  """
  fields = dict(base)
  inferred = []

  def take(field, value):
    fields[field] = value
    inferred.append(field)

  width = None
  for key in ('norm.weight', 'encoder.second_conv.3.bias', 'pos_embed.2.bias'):
    if key in tensors:
      width = int(tensors[key].shape[0])
      break
  if width is not None:
    take('trans_dim', width)
    take('encoder_dims', width)
  c = fields['trans_dim']
  blocks = {keymap.block_index(k) for k in tensors} - {None}
  if blocks:
    take('depth', max(blocks) + 1)
  fc1 = tensors.get('blocks.blocks.0.mlp.fc1.weight')
  if fc1 is not None and fc1.ndim == 2:
    take('mlp_ratio', float(fc1.shape[0]) / c)
  down = tensors.get('blocks.blocks.0.Adapter_MLP.down_proj.weight')
  if down is not None:
    take('rank', int(down.shape[0]))
  if c % fields['num_heads']:
    raise ConvertError(f'trans_dim {c} is not divisible by the default num_heads '
                       f'{fields["num_heads"]}; pass --config with the right num_heads')
  if method != 'dapt':
    take('peft', method)
    down = tensors.get('blocks.blocks.0.gft_adapter.down.weight')
    if down is not None:
      take('pgst_rank', int(down.shape[0]))
    prompts = tensors.get('cls_prompt_list.0')
    if prompts is not None and prompts.ndim == 3:
      take('vpt_prompts', int(prompts.shape[1]))
  if with_head:
    last = tensors.get('cls_head_finetune.8.weight')
    first = tensors.get('cls_head_finetune.0.weight')
    if last is not None:
      take('num_classes', int(last.shape[0]))
    if method != 'dapt':  # the head input is the method's own (IDPT: 3C, the others: 2C)
      pieces = 3 if method == 'idpt' else 2
      if first is not None and first.ndim == 2 and first.shape[1] != pieces * c:
        raise ConvertError(f'the head input width {first.shape[1]} is not {pieces} × trans_dim '
                           f'{c}, as a {method} model has')
    elif first is not None and first.ndim == 2:
      n, rem = divmod(int(first.shape[1]), c)
      if rem or not 1 <= n <= 3:
        raise ConvertError(f'the head input width {first.shape[1]} is not 1-3 × trans_dim {c}; '
                           'pass --config')
      if n < 3:
        choices = {1: 'cls, prompt or patch', 2: 'cls+prompt, cls+patch or prompt+patch'}[n]
        raise ConvertError(
            f'the head input width {first.shape[1]} = {n} × trans_dim could be {choices}; pass '
            '--config to say which (e.g. configs/scanobjectnn.py:objonly is cls+prompt, '
            'configs/modelnet40.py is cls+patch)')
      take('head_tokens', ['cls', 'prompt', 'patch'])
  return fields, inferred


def variable_shapes(fields: Mapping[str, Any]) -> dict[str, dict]:
  """{'params', 'batch_stats'} of jax.ShapeDtypeStruct for the model `fields` describe."""
  import jax  # pylint: disable=g-import-not-at-top
  from dapt_jax.models import classifier as model_lib  # pylint: disable=g-import-not-at-top
  try:
    net = model_lib.build_model(fields)
  except ValueError as e:
    raise ConvertError(f'config: {e}') from None
  num_points = max(net.num_group, net.group_size)
  return jax.eval_shape(lambda k: model_lib.init_variables(net, k, num_points=num_points),
                        jax.random.key(0))


# ---------------------------------------------------------------------------------------------
# The masked autoencoder (pre-training configs: `config.task == 'pretrain'`).


def _field(obj: Any, name: str) -> Any:
  if isinstance(obj, Mapping):
    return obj.get(name)
  return getattr(obj, name, None)


def is_pretrain_config(cfg: Any) -> bool:
  """Whether a config (or its model section / fields) describes the masked autoencoder."""
  if _field(cfg, 'task') == 'pretrain':
    return True
  section = _field(cfg, 'model')
  return _field(cfg if section is None else section, 'decoder_depth') is not None


def mae_model_fields(cfg: Any) -> dict[str, Any]:
  """A pre-training config's `model` section (or a mapping of its fields) as a JSON-able dict."""
  from dapt_jax.models import mae  # pylint: disable=g-import-not-at-top
  section = _field(cfg, 'model')
  section = cfg if section is None else section
  out = {}
  for field in mae.MODEL_FIELDS:
    try:
      value = section[field] if isinstance(section, Mapping) else getattr(section, field)
    except (KeyError, AttributeError):
      raise ConvertError(f'the pre-training config has no model.{field}') from None
    out[field] = list(value) if isinstance(value, (tuple, list)) else value
  return out


def mae_variable_shapes(fields: Mapping[str, Any]) -> dict[str, dict]:
  """{'params', 'batch_stats'} of jax.ShapeDtypeStruct for the autoencoder `fields` describe."""
  import jax  # pylint: disable=g-import-not-at-top
  from dapt_jax.models import mae  # pylint: disable=g-import-not-at-top
  try:
    net = mae.build_model(fields)
  except ValueError as e:
    raise ConvertError(f'config: {e}') from None
  num_points = max(net.num_group, net.group_size)
  return jax.eval_shape(lambda k: mae.init_variables(net, k, num_points=num_points),
                        jax.random.key(0))


# ---------------------------------------------------------------------------------------------
# The part-segmentation network (segmentation configs: `config.task == 'segmentation'`).

# The model a segmentation checkpoint converts to when no --config is given, per layout.
DEFAULT_SEG_CONFIGS = {'point_mae_seg': 'configs/shapenetpart.py:pointmae',
                       'dapt_seg': 'configs/shapenetpart.py:dapt'}


def is_segmentation_config(cfg: Any) -> bool:
  """Whether a config (or its model section / fields) describes the segmentation network."""
  if _field(cfg, 'task') == 'segmentation':
    return True
  section = _field(cfg, 'model')
  return _field(cfg if section is None else section, 'num_parts') is not None


def seg_model_fields(cfg: Any) -> dict[str, Any]:
  """A segmentation config's `model` section (or a mapping of its fields) as a JSON-able dict."""
  from dapt_jax.models import segmenter  # pylint: disable=g-import-not-at-top
  section = _field(cfg, 'model')
  section = cfg if section is None else section
  try:
    return segmenter.model_fields(section)
  except ValueError as e:
    raise ConvertError(f'the segmentation config: {e}') from None


def default_seg_fields(layout: str) -> tuple[dict[str, Any], str]:
  """(model fields, config spec) of the default model for a segmentation layout."""
  spec = DEFAULT_SEG_CONFIGS[layout]
  path, _, arg = spec.partition(':')
  full = REPO_ROOT / path
  if not full.is_file():
    raise ConvertError(f'no --config given and the default {spec} is not there; pass --config')
  return seg_model_fields(load_config(f'{full}:{arg}')), spec


def seg_variable_shapes(fields: Mapping[str, Any]) -> dict[str, dict]:
  """{'params', 'batch_stats'} of jax.ShapeDtypeStruct for the segmentation network `fields`
  describe."""
  import jax  # pylint: disable=g-import-not-at-top
  from dapt_jax.models import segmenter  # pylint: disable=g-import-not-at-top
  try:
    net = segmenter.build_model(fields)
  except ValueError as e:
    raise ConvertError(f'config: {e}') from None
  num_points = max(net.num_group, net.group_size)
  return jax.eval_shape(
      lambda k: segmenter.init_variables(net, k, num_points=num_points),
      jax.random.key(0))
