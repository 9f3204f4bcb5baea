"""What a PEFT method is to the rest of the project: the `Method` interface.

A method is one module under dapt_jax/models/peft/ holding a `Method` subclass. Everything that
differs per method lives there and only there:

  - `OPTIONS`: the `config.model` fields it reads, with their defaults, and `check` of their
    values against the backbone;
  - what it adds to a block (`block_additions` → `transformer.Additions`) and to the token
    sequence (`patch_tokens`, `start`, `block_input`, `final_norm`, where its prompts and the
    patch tokens sit: `prompts` / `patches`), used by the one encoder (`models.encoder`);
  - what the classifier's head reads (`head_tokens`) and whether the segmenter gets a class token;
  - its trainable partition (`trainable_rules`, given the family's head rules);
  - its release checkpoint (`RELEASE`, a `release_keys.Release`: the PyTorch keys of its
    classifier as key map rows, how its fine-tuned checkpoints are recognised and what their
    tensors say about the model), which `python -m convert` reads; None where there is none.

Adding a method: a module here with a `Method` subclass (its `NAME` the module's name) defining
what it needs of the above, and its name in `peft.METHODS` (dapt_jax/models/peft/__init__.py);
nothing outside dapt_jax/models/peft/ changes (convert/ finds its release through the registry).

A `Method` instance is a frozen dataclass holding its option values, so it is hashable and can be
a Flax module attribute. The plain backbone (Point-MAE: position embedding added before every
block, no prompts) is the default behaviour of every hook.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

from dapt_jax.models import config as config_lib
from dapt_jax.models import release_keys
from dapt_jax.models import transformer
from dapt_jax.models.config import ModelConfigError

Array = jax.Array
Rules = Sequence[tuple[str, str]]

TRAINABLE = 'trainable'
FROZEN = 'frozen'
# The release's `cls` name rule: the class token and its position train with every method.
CLS_RULES: Rules = ((r'^cls_(token|pos)$', TRAINABLE),)
EVERYTHING_ELSE_FROZEN: Rules = ((r'.*', FROZEN),)


@dataclasses.dataclass(frozen=True)
class Encoding:
  """The shapes an encoder pass works with: `lead` tokens (1 with a class token, else 0) precede
  the patches; `num_patches` is G; `width` is C; `depth` the number of blocks."""
  lead: int
  num_patches: int
  width: int
  depth: int
  axis_name: Optional[str]
  dtype: Any


@dataclasses.dataclass(frozen=True)
class Method:
  """A PEFT method with its option values (see the module docstring)."""
  NAME: ClassVar[str] = ''
  OPTIONS: ClassVar[Mapping[str, Any]] = {}
  # Whether the part segmenter gets a class token (and its position) with this method.
  SEGMENTER_CLASS_TOKEN: ClassVar[bool] = False
  # Its release checkpoint's keys and how to read one (None: the project's own design, no release).
  RELEASE: ClassVar[Optional[release_keys.Release]] = None

  # -- options ----------------------------------------------------------------------------------

  @classmethod
  def from_config(cls, cfg: Any, backbone: Mapping[str, Any]) -> 'Method':
    """The method with the option values `cfg` (a model section) holds, checked."""
    values = {f: config_lib.get(cfg, f, default) for f, default in cls.OPTIONS.items()}
    method = cls(**values)
    method.check(backbone)
    return method

  def check(self, backbone: Mapping[str, Any]) -> None:
    """Raises ModelConfigError naming the field when an option cannot build the model."""

  # -- the encoder -------------------------------------------------------------------------------

  def patch_tokens(self, tokens: Array) -> Array:
    """The patch encoder's tokens [B, G, C] before the class token is prepended."""
    return tokens

  def context(self, centers: Array, enc: Encoding, valid: Optional[Array] = None) -> Any:
    """What every block of one forward pass shares (computed once; None for most methods).
    `valid` [B] bool marks the real clouds of a padded batch."""
    return None

  def start(self, enc: Encoding) -> Any:
    """Creates the method's sequence-level parameters (e.g. prompts); handed to block_input."""
    return None

  def block_additions(self, index: int, enc: Encoding) -> transformer.Additions:
    """What block `index` adds to Point-MAE's block."""
    return transformer.NO_ADDITIONS

  def block_input(self, index: int, x: Array, pos: Array, state: Any, enc: Encoding,
                  train: bool) -> tuple[Array, Array]:
    """(what block `index` sees, the positions from now on). x: the previous block's output
    (or the tokens), pos: positions of x's tokens. Plain: the position before every block."""
    return x + pos, pos

  def final_norm(self) -> Callable[[Array], Array]:
    """What follows the encoder's final LayerNorm (DAPT: a scale-shift); created once, since a
    family may normalise several block outputs with it."""
    return lambda x: x

  def patches(self, x: Array, enc: Encoding) -> Array:
    """The patch tokens [B, G, C] of a block output."""
    return x[:, x.shape[1] - enc.num_patches:]

  def prompts(self, x: Array, enc: Encoding) -> Array:
    """The prompt tokens of a block output (possibly none): between the lead and the patches."""
    return x[:, enc.lead:x.shape[1] - enc.num_patches]

  # -- heads and training ------------------------------------------------------------------------

  def head_tokens(self, configured: Sequence[str]) -> tuple[str, ...]:
    """What the classifier's head reads: 'cls', 'prompt' (mean of the prompts), 'patch' (max
    over the patches). Point-MAE's release: the class token and the patch maximum."""
    del configured
    return ('cls', 'patch')

  def trainable_rules(self, head_rules: Rules) -> Rules:
    """The ordered partition rules: the class token, the family's head, the method's own."""
    return CLS_RULES + tuple(head_rules) + tuple(self.own_rules()) + EVERYTHING_ELSE_FROZEN

  def own_rules(self) -> Rules:
    """The rules of what the method adds (all trainable unless a rule says otherwise)."""
    return ()

  def frozen_at_init(self) -> tuple[str, ...]:
    """Regexes of parameters the method freezes at their initial values by design (so a
    pre-trained backbone need not hold them)."""
    return ()


def positive_int(field: str, value: Any) -> int:
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise ModelConfigError(f'model.{field}={value!r}: must be a positive integer')
  return value


def broadcast(param: Array, batch: int, dtype: Any) -> Array:
  """A [1, n, C] parameter as [B, n, C] of `dtype`."""
  return jnp.broadcast_to(param, (batch,) + param.shape[1:]).astype(dtype)
