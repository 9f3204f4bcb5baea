"""JAX's persistent compilation cache, on by default (`config.compile_cache_dir`).

Compiling the training step takes 30–70 s on a CPU host (and tens of seconds on a GPU) at every
start. With the cache, XLA's compiled executables are written to disk, keyed by the program, the
JAX / XLA versions, the devices and the compile options, so a second start of the same config on
the same machine loads them instead of compiling (`python -m dapt_jax.bench` reports first against
second start). Different machines or versions get different keys; a stale entry is never used.

    from dapt_jax import compile_cache
    compile_cache.enable(config.compile_cache_dir)   # before anything is compiled
"""
from __future__ import annotations

import logging
import os
from typing import Optional

from dapt_jax import errors

DEFAULT_DIR = '~/.cache/dapt_jax/jax_cache'

# Programs that compile faster than this are not written (JAX's own default is 1 s); the
# training and evaluation steps take far longer, tiny helper programs are not worth a file.
MIN_COMPILE_SECONDS = 0.5


class CompileCacheError(errors.UserError, ValueError):
  """The cache folder cannot be used; the message is one line naming the field."""


def enable(cache_dir: Optional[str] = DEFAULT_DIR,
           min_compile_seconds: float = MIN_COMPILE_SECONDS) -> Optional[str]:
  """Turns the persistent cache on in `cache_dir` ('~' expanded); '' or None turns it off.

  Call before the first compilation. Returns the absolute folder, or None when off.

  Raises:
    CompileCacheError: the folder cannot be created or written.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top
  # JAX opens its cache at the first compilation; forget that one so the settings below apply
  # (quietly: JAX logs the reset at INFO level).
  logging.getLogger(compilation_cache.__name__).setLevel(logging.WARNING)
  logging.getLogger('jax._src.compilation_cache').setLevel(logging.WARNING)
  compilation_cache.reset_cache()
  if not cache_dir:
    jax.config.update('jax_enable_compilation_cache', False)
    return None
  path = os.path.abspath(os.path.expanduser(cache_dir))
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise CompileCacheError(f'config.compile_cache_dir={cache_dir!r}: cannot create the folder '
                            f'({e.strerror}); set another folder or \'\' to turn the cache off')
  if not os.access(path, os.W_OK):
    raise CompileCacheError(f'config.compile_cache_dir={cache_dir!r}: the folder is not writable; '
                            "set another folder or '' to turn the cache off")
  jax.config.update('jax_enable_compilation_cache', True)
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', float(min_compile_seconds))
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return path
