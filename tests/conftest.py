"""Test set-up: 8 forced CPU devices for the multi-device tests (set before JAX is imported),
the repository root on sys.path, and the shared sample data location."""
import contextlib
import fcntl
import os
import pathlib
import shutil
import sys

import pytest

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=8').strip()

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

# Real sample data lives beside the checkout; tests that need it skip when it is absent.
SHARED_DATA = ROOT.parent / 'shared' / 'data'


# The modules with the longest tests (end-to-end runs, two processes, 8-device pmap: 30–140 s
# each on 2 cores) go first, so that `pytest -n 2` does not end with one worker running a long
# test while the other idles. Whole modules move (their module-scoped fixtures are set up once);
# only the order changes, every test still runs. scripts/test.sh keeps this order for xdist
# (--dist loadscope --no-loadscope-reorder).
_LONG_FIRST = (
    'tests/test_multiprocess.py',
    'tests/test_train.py',
    'tests/test_reliability.py',
    'tests/test_serve.py',  # trains the run that test_export and test_predict then reuse
    'tests/test_segmentation_methods.py',
    'tests/test_export.py',
    'tests/test_demo_quickstart.py',
    'tests/test_old_workdir.py',
    'tests/test_pretrain.py',
    'tests/test_data_folder.py',
    'tests/test_sweep.py',
    'tests/test_cli_errors.py',
    'tests/test_trajectory.py',
    'tests/test_peft_train.py',
    'tests/test_predict.py',
    'tests/test_segmentation_task.py',
    'tests/test_peft_sweep.py',
    'tests/test_pretrain_shapenet55.py',
    'tests/test_fewshot.py',
)


def pytest_collection_modifyitems(items):
  def rank(item):
    module = item.nodeid.split('::')[0]
    return _LONG_FIRST.index(module) if module in _LONG_FIRST else len(_LONG_FIRST)
  items.sort(key=rank)  # stable: file order within each module and among the rest


@contextlib.contextmanager
def x64_enabled():
  """JAX in float64 inside the block (the float64 parity checks); the flag is restored after."""
  import jax  # pylint: disable=g-import-not-at-top  (after XLA_FLAGS)
  previous = jax.config.jax_enable_x64
  jax.config.update('jax_enable_x64', True)
  try:
    yield
  finally:
    jax.config.update('jax_enable_x64', previous)


@pytest.fixture
def x64():
  """x64_enabled() for one test."""
  with x64_enabled():
    yield


@pytest.fixture(scope='session', autouse=True)
def _persistent_compilation_cache():
  """In-process tests use JAX's persistent compilation cache in the folder main.py uses by
  default, as every main.py the tests start already does: the same program (a tiny model's
  init, training and evaluation steps) is built again by many tests and runs, and reading it
  back takes a fraction of a second instead of 5–12 s of XLA compilation on 2 cores. Compiled
  code is the same either way (the key is the program, versions, devices and options)."""
  from dapt_jax import compile_cache  # pylint: disable=g-import-not-at-top  (after XLA_FLAGS)
  compile_cache.enable(compile_cache.DEFAULT_DIR)


def made_once(tmp_path_factory, name, make):
  """A folder that `make(folder)` fills once per test run, shared by the xdist workers.

  For a costly, read-only product that several modules need (a tiny trained run): the first
  worker to ask makes it under the run's common temporary folder while holding a lock; the
  others wait for it and reuse it. A `make` that fails leaves nothing behind for the next
  caller (it tries again). Callers copy what they will change.
  """
  base = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    base = base.parent  # popen-gw<N>'s parent: the same folder for every worker of this run
  folder = base / f'made_once_{name}'
  with open(base / f'made_once_{name}.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (folder / '.complete').exists():
      shutil.rmtree(folder, ignore_errors=True)
      folder.mkdir()
      try:
        make(folder)
      except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
      (folder / '.complete').touch()
  return folder
