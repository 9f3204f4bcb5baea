"""The PEFT methods' release checkpoints as the converter sees them, read through the method
registry (dapt_jax/models/peft): each method defines its own (`Method.RELEASE`, a
`release_keys.Release`) in its module, so nothing here is specific to a method. Methods without
one (the project's own designs) cannot be written out, and take their backbone's keys from the
plain Point-MAE release.
"""
from __future__ import annotations

from typing import Iterable

from dapt_jax.models import classifier
from dapt_jax.models import peft
from dapt_jax.models import release_keys

Release = release_keys.Release

# config.model.peft → its release, for the methods that have one, in registry order.
RELEASES: dict[str, Release] = {name: peft.get(name).RELEASE for name in peft.METHODS
                                if peft.get(name).RELEASE is not None}

# The method of a classification config without model.peft.
DEFAULT: str = classifier.OPTIONAL_FIELDS['peft']
# The first method whose release is the plain Point-MAE classifier's: where a backbone's keys come
# from when the method has no release, and the layout the other families' backbones share.
PLAIN: str = next(name for name, r in RELEASES.items() if r is release_keys.PLAIN)


def release_rows(method: str, depth: int) -> Iterable[tuple]:
  """The key map rows of `method`'s classifier of `depth` blocks, in its release's order.

  Raises:
    ValueError: `method` has no release layout.
  """
  if method not in RELEASES:
    raise ValueError(f'model.peft={method!r} has no release checkpoint layout (the project\'s '
                     f'own design); convertible: {", ".join(RELEASES)}')
  return RELEASES[method].rows(depth)
