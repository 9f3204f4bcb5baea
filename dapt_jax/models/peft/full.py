"""Full fine-tuning: Point-MAE's own model, nothing added; every parameter trains (SPEC §9)."""
from __future__ import annotations

import dataclasses

from dapt_jax.models import release_keys
from dapt_jax.models.peft import base


@dataclasses.dataclass(frozen=True)
class Method(base.Method):
  NAME = 'full'
  RELEASE = release_keys.PLAIN  # Point-MAE's fine-tuned classifier

  def trainable_rules(self, head_rules):
    return ((r'.*', base.TRAINABLE),)
