"""One table per model family: what `python -m convert` needs to know to convert its checkpoints
either way. The two paths (convert/from_torch.py, convert/to_torch.py) read only these tables.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Iterable, Mapping

from convert import keymap
from convert import layouts
from convert import methods
from convert import model_config
from convert.errors import ConvertError


@dataclasses.dataclass(frozen=True)
class Family:
  """A model family (dapt_jax.models.<module>) and its checkpoints."""
  module: str   # its module: build_model(fields) and init_variables(net, key, num_points)
  kind: str     # its configs, in messages ('pre-training': "not a pre-training config")
  what: Callable[[Mapping[str, Any]], str]  # its model in messages, given the model's fields
  # Key map: (method, the model's leaf names) → rows (convert/keymap.py).
  rows: Callable[[str, set[str]], Iterable[tuple]]
  fields: Callable[[Any], dict[str, Any]]   # a config / model section / fields → model fields
  method: Callable[[Mapping[str, Any]], str]  # model fields → the release its keys follow
  task: str | None = None          # config.task of its configs; None: any other config is its
  config_field: str | None = None  # a model field only its configs have
  param: str | None = None         # a top-level parameter only its variables have
  # Layouts recognised as its checkpoints → the config they convert to without --config.
  defaults: Mapping[str, str] = dataclasses.field(default_factory=dict)
  infer: bool = False   # without --config, the model's shapes are read off the checkpoint
  strict: layouts.Layout | None = None   # with its config, files are read in this layout
  container: str = 'base_model'  # where --to-torch puts the state dict
  torch_layout: Callable[[Mapping[str, Any]], str] = lambda fields: ''  # what --to-torch wrote
  incomplete: str = ''  # why a model may lack tensors --to-torch needs
  no_record: str | None = None  # --to-torch without a recorded model ({src}); None: as stored

  def is_config(self, cfg: Any) -> bool:
    """Whether a config (or its model section / fields) describes this family's model."""
    return (self.task is not None and model_config.field(cfg, 'task') == self.task or
            self.config_field is not None and
            model_config.field(model_config.section(cfg), self.config_field) is not None)

  def shapes(self, fields: Mapping[str, Any]) -> dict[str, dict]:
    """{'params', 'batch_stats'} of jax.ShapeDtypeStruct for the model `fields` describe."""
    import jax  # pylint: disable=g-import-not-at-top
    lib = importlib.import_module(f'dapt_jax.models.{self.module}')
    try:
      net = lib.build_model(fields)
    except ValueError as e:
      raise ConvertError(f'config: {e}') from None
    num_points = max(net.num_group, net.group_size)
    return jax.eval_shape(lambda key: lib.init_variables(net, key, num_points=num_points),
                          jax.random.key(0))

  def entries(self, variables: Mapping[str, Mapping], method: str) -> list:
    """The key map entries of exactly the leaves of `variables` (ValueError otherwise)."""
    return keymap.entries_for_variables(variables, method, self.rows,
                                        f'the {self.module} key map (convert/keymap.py)')


def _method_name(fields: Mapping[str, Any]) -> str:
  method = fields.get('peft', methods.DEFAULT)
  return methods.RELEASES[method].name if method in methods.RELEASES else method


# The methods whose part-segmentation exports are told apart (layouts.segmentation_layout); each
# converts, without --config, to the variant of configs/shapenetpart.py named after it.
_SEGMENTATION_EXPORTS = [m for m, r in methods.RELEASES.items() if r.own_keys and r.segmentation]


def _segmenter_layout(fields: Mapping[str, Any]) -> str:
  """What --to-torch writes for a segmentation network of the method `fields` name."""
  method = fields.get('peft')
  if method not in _SEGMENTATION_EXPORTS:
    return "Point-MAE's part-segmentation layout"
  name = methods.RELEASES[method].name
  return f"Point-MAE's part-segmentation layout with the {name} release's names for {name}'s parts"


CLASSIFIER = Family(
    'classifier', 'classification', lambda fields: f'{_method_name(fields)} model',
    keymap.classifier_rows, model_config.classifier_fields,
    lambda fields: fields.get('peft', methods.DEFAULT),
    defaults=dict.fromkeys(['point_mae', 'recon', 'act', 'point_bert', 'backbone'] + [
        m for m, r in methods.RELEASES.items() if r.own_keys], model_config.DEFAULT_CONFIG),
    infer=True,
    torch_layout=lambda fields: 'DAPT release layout',
    incomplete='a converted pre-training checkpoint has no adapters or head; train or convert a '
    'fine-tuned model first',
    no_record='{src} has no report.json saying which model it holds; pass --config')

SEGMENTER = Family(
    'segmenter', 'segmentation', lambda fields: 'segmentation network', keymap.segmenter_rows,
    model_config.segmenter_fields,
    lambda fields: fields.get('peft', methods.DEFAULT),
    task='segmentation', config_field='num_parts', param='label_conv',
    defaults={'point_mae_seg': 'configs/shapenetpart.py:pointmae',
              **{layouts.segmentation_layout(m): f'configs/shapenetpart.py:{m}'
                 for m in _SEGMENTATION_EXPORTS}},
    container='model_state_dict',  # where Point-MAE's segmentation code keeps its state dict
    torch_layout=_segmenter_layout,
    incomplete='a converted backbone has no head; train or convert a fine-tuned model',
    no_record='{src} records no segmentation model (no config.json or report.json with one); '
    'pass --config configs/shapenetpart.py[:variant]')

MAE = Family(
    'mae', 'pre-training', lambda fields: 'masked autoencoder', keymap.mae_rows,
    model_config.mae_fields, lambda fields: methods.PLAIN,
    task='pretrain', config_field='decoder_depth', param='mask_token',
    strict=layouts.LAYOUTS['point_mae_full'],
    torch_layout=lambda fields: "Point-MAE's pre-training layout (MAE_encoder, MAE_decoder, "
    'mask_token, ...)',
    incomplete='a converted backbone has no decoder; convert a pre-training checkpoint with a '
    'pre-training config')

FAMILIES = (MAE, SEGMENTER, CLASSIFIER)  # the order they are told apart in; the last is the rest


def for_config(cfg: Any) -> Family:
  return next(f for f in FAMILIES if f.is_config(cfg) or f is FAMILIES[-1])


def for_layout(layout: str) -> Family:
  return next(f for f in FAMILIES if layout in f.defaults)


def for_variables(variables: Mapping[str, Mapping]) -> Family:
  params = variables.get('params', {})
  return next(f for f in FAMILIES if f.param in params or f is FAMILIES[-1])
