"""Linear probing as the releases run it: nothing added; only the class token, its position and
the head train (SPEC §9)."""
from __future__ import annotations

import dataclasses

from dapt_jax.models import release_keys
from dapt_jax.models.peft import base


@dataclasses.dataclass(frozen=True)
class Method(base.Method):
  NAME = 'linear'
  RELEASE = release_keys.PLAIN  # Point-MAE's fine-tuned classifier
