"""The persistent compilation cache: on in a folder, off with '', a clear error for a bad folder."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from jax.experimental.compilation_cache import compilation_cache

from dapt_jax import compile_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_FIELDS = ('jax_enable_compilation_cache', 'jax_compilation_cache_dir',
           'jax_persistent_cache_min_compile_time_secs',
           'jax_persistent_cache_min_entry_size_bytes')


@pytest.fixture
def restore_jax_config():
  saved = {f: getattr(jax.config, f) for f in _FIELDS}
  yield
  for f, v in saved.items():
    jax.config.update(f, v)
  compilation_cache.reset_cache()


def _files(path):
  return sum(len(f) for _, _, f in os.walk(path))


def test_second_compilation_is_read_from_the_cache(tmp_path, restore_jax_config):
  folder = compile_cache.enable(str(tmp_path / 'cache'), min_compile_seconds=0.0)
  assert folder == str(tmp_path / 'cache') and os.path.isdir(folder)
  fn = lambda x: jnp.sin(x) @ x.T + 3.0
  x = jnp.ones((8, 8))
  jax.jit(fn).lower(x).compile()
  written = _files(folder)
  assert written >= 1
  hits = []
  jax.monitoring.register_event_listener(
      lambda name, **kw: hits.append(name) if name == '/jax/compilation_cache/cache_hits' else None)
  jax.clear_caches()  # forget the in-memory executable: the next one must come from disk
  jax.jit(fn).lower(x).compile()
  assert hits, 'the second compilation did not read the persistent cache'
  assert _files(folder) == written


def test_empty_folder_turns_the_cache_off(restore_jax_config):
  assert compile_cache.enable('') is None
  assert not jax.config.jax_enable_compilation_cache


def test_unusable_folder_is_a_one_line_error(tmp_path, restore_jax_config):
  blocker = tmp_path / 'file'
  blocker.write_text('not a folder')
  with pytest.raises(compile_cache.CompileCacheError, match='config.compile_cache_dir'):
    compile_cache.enable(str(blocker / 'cache'))
  res = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/synthetic.py', f'--workdir={tmp_path}/w',
       f'--config.compile_cache_dir={blocker}/cache'],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''})
  assert res.returncode == 2
  last = res.stderr.strip().splitlines()[-1]
  assert last.startswith('error: config.compile_cache_dir=') and 'Traceback' not in res.stderr
  assert not os.path.exists(f'{tmp_path}/w')  # nothing written before the check
