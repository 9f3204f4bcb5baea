"""Parameter-efficient fine-tuning methods beside DAPT, on Point-MAE's plain backbone (SPEC §9).

`config.model.peft` picks one; `model.build_model` builds DAPT itself (`dapt_jax/models/classifier.py`) and
hands every other method to `build_classifier` here. Each method's additions live in their own
module; `classifier.PEFTClassifier` composes them with the backbone; which parameters train is
data, `partition.METHOD_RULES[method]`.

| method     | added to the frozen Point-MAE backbone (what trains besides cls token/pos + head) |
|------------|-----------------------------------------------------------------------------------|
| `full`     | nothing; everything trains                                                         |
| `linear`   | nothing; only the class token, its position and the head train                     |
| `vpt_deep` | `vpt.py`: per block, prompts with their own positions appended to the sequence    |
| `idpt`     | `idpt.py`: a DGCNN prompt module before one block (the last by default)            |
| `pointgst` | `pointgst.py`: a graph-spectral adapter (PCSA) in every block                      |
| `lora`     | `lora.py`: low-rank updates of the attention's qkv and proj                         |
| `adapter`  | `adapter.py`: two bottleneck adapters per block (after attention, after the MLP)   |
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

# Every method `config.model.peft` accepts; 'dapt' is built by dapt_jax/models/classifier.py.
METHODS = ('dapt', 'full', 'linear', 'vpt_deep', 'idpt', 'pointgst', 'lora', 'adapter')


@dataclasses.dataclass(frozen=True)
class Options:
  """The methods' own settings (config.model fields of the same names; defaults = SPEC §9)."""
  vpt_prompts: int = 10          # VPT-deep: prompts per block
  idpt_prompt_layer: int = -1    # IDPT: the block its prompt is inserted before (-1: the last)
  idpt_k: int = 20               # IDPT: neighbours of each token in the EdgeConv graph
  pgst_rank: int = 36            # PointGST: PCSA bottleneck width
  pgst_local: int = 32           # PointGST: centres per local sub-graph (must divide num_group)
  lora_rank: int = 8             # LoRA: rank of the qkv / proj updates
  lora_alpha: float = 8.0        # LoRA: the update is scaled by lora_alpha / lora_rank
  adapter_dim: int = 32          # adapter: bottleneck width


OPTION_FIELDS = tuple(f.name for f in dataclasses.fields(Options))


def _get(cfg: Any, field: str, default: Any) -> Any:
  if isinstance(cfg, Mapping):
    return cfg.get(field, default)
  return getattr(cfg, field, default)


def options_from_config(cfg: Any) -> Options:
  """The Options a config's `model` section holds (missing fields keep their defaults)."""
  defaults = Options()
  return Options(**{f: _get(cfg, f, getattr(defaults, f)) for f in OPTION_FIELDS})


def validate(method: str, options: Options, num_group: int, depth: int) -> None:
  """Raises model.ModelConfigError naming the field when `options` cannot build `method`."""
  from dapt_jax.models.classifier import ModelConfigError  # pylint: disable=g-import-not-at-top
  if method not in METHODS:
    raise ModelConfigError(f'model.peft={method!r}: must be one of {", ".join(METHODS)}')

  def positive_int(field):
    value = getattr(options, field)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ModelConfigError(f'model.{field}={value!r}: must be a positive integer')
    return value

  if method == 'vpt_deep':
    positive_int('vpt_prompts')
  elif method == 'idpt':
    k = positive_int('idpt_k')
    if k > num_group:
      raise ModelConfigError(f'model.idpt_k={k} exceeds model.num_group={num_group} (each token '
                             'needs that many neighbours)')
    layer = options.idpt_prompt_layer
    if not isinstance(layer, int) or not -depth <= layer < depth:
      raise ModelConfigError(f'model.idpt_prompt_layer={layer!r}: must be a block index in '
                             f'[{-depth}, {depth - 1}] (negative counts from the end)')
  elif method == 'pointgst':
    positive_int('pgst_rank')
    local = positive_int('pgst_local')
    if local < 2 or num_group % local:
      raise ModelConfigError(f'model.pgst_local={local}: must be at least 2 and divide '
                             f'model.num_group={num_group}')
  elif method == 'lora':
    positive_int('lora_rank')
    if not float(options.lora_alpha) > 0.0:
      raise ModelConfigError(f'model.lora_alpha={options.lora_alpha!r}: must be positive')
  elif method == 'adapter':
    positive_int('adapter_dim')


def build_classifier(cfg: Any, method: str, axis_name: Optional[str] = None, **backbone: Any):
  """The classifier of `method` (not 'dapt') on Point-MAE's backbone.

  Args:
    cfg: the config's `model` section (the methods' option fields are read from it).
    method: one of METHODS other than 'dapt'.
    axis_name: the device axis inside pmap / shard_map (synchronised BatchNorm statistics).
    **backbone: the shared fields `model.build_model` validated (trans_dim, depth, ...).
  """
  from dapt_jax.models.peft import classifier  # pylint: disable=g-import-not-at-top
  options = options_from_config(cfg)
  validate(method, options, backbone['num_group'], backbone['depth'])
  if method == 'dapt':
    raise ValueError("build_classifier builds the methods other than 'dapt'")
  options = dataclasses.replace(options, lora_alpha=float(options.lora_alpha))
  return classifier.PEFTClassifier(method=method, options=options, axis_name=axis_name,
                                   **backbone)
