"""The library imports without torch (a test/convert-only dependency) and without the data
stack for the model and step functions (benchmark machines may lack TFDS and grain)."""
import subprocess
import sys

from tests.conftest import ROOT

BLOCK = '''
import sys
class Block:
  def __init__(self, names): self.names = names
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in self.names:
      raise ImportError(f'blocked for the test: {name}')
sys.meta_path.insert(0, Block(NAMES))
'''


def _run(names, body):
  code = BLOCK.replace('NAMES', repr(names)) + body
  return subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                        env={'JAX_PLATFORMS': 'cpu', 'PATH': '/usr/bin:/bin'}, timeout=300)


def test_library_imports_without_torch():
  r = _run(['torch'], 'import dapt_jax.models.classifier, dapt_jax.train, dapt_jax.pretrained, '
                      'dapt_jax.bench, main; print("ok")')
  assert r.returncode == 0 and r.stdout.strip().endswith('ok'), r.stderr[-2000:]


def test_model_and_steps_import_without_data_stack():
  r = _run(['torch', 'tensorflow_datasets', 'grain', 'array_record', 'h5py'],
           'import dapt_jax.models.classifier, dapt_jax.steps, dapt_jax.optim, dapt_jax.partition; print("ok")')
  assert r.returncode == 0 and r.stdout.strip().endswith('ok'), r.stderr[-2000:]
