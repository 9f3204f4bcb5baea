"""PEFT methods train and evaluate end to end through the one training loop (linear and lora in
tests/test_peft_sweep.py), on the synthetic set with a tiny model (one block; 2 epochs of 2 steps, an evaluation after the second):
the logged counts are the partition's, what its rules train moves, the backbone is frozen. Two of
the runs then draw their t-SNE (--mode=tsne: in-process, and through main.py)."""
import os
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from dapt_jax import partition
from tests.test_train import ROOT
from tests.test_train import tiny_config

METHOD_SETTINGS = {'model.depth': 1, 'model.vpt_prompts': 2, 'model.idpt_k': 4,
                   'model.pgst_rank': 4, 'model.pgst_local': 4, 'model.lora_rank': 2,
                   'model.adapter_dim': 4, 'num_epochs': 1, 'data.synthetic_num_train': 32,
                   'data.synthetic_num_test': 12, 'eval.batch_size': 8}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """One prepared synthetic set for every method."""
  return tmp_path_factory.mktemp('peft_data')


def saved(workdir, step):
  """(trainable, frozen) flat numpy trees of the save at `step`."""
  root = os.path.join(workdir, 'checkpoints')
  with ocp.StandardCheckpointer() as ckptr:
    state = ckptr.restore(os.path.join(root, 'last', str(step), 'state'))
    frozen = ckptr.restore(os.path.join(root, 'frozen'))['frozen']
  return (partition.flatten(dict(state['trainable'])),
          partition.flatten(dict(frozen)) if frozen else {})


# linear and lora train end to end through the same loop in tests/test_peft_sweep.py, and every
# method's step moves exactly its trainable set in tests/test_segmentation_methods.py.
@pytest.mark.parametrize('method', ['full', 'vpt_deep', 'idpt', 'pointgst', 'adapter'])
def test_method_trains_and_evaluates(data_dir, tmp_path, method):
  from dapt_jax import train  # pylint: disable=g-import-not-at-top
  config = tiny_config(data_dir, **METHOD_SETTINGS, **{'model.peft': method})
  workdir = str(tmp_path / 'run')
  summary = train.train_and_evaluate(config, workdir)
  assert summary['stopped'] == 'finished' and summary['steps'] == 4
  assert 0.0 <= summary['final_accuracy'] <= 1.0
  trainable_2, frozen = saved(workdir, 2)
  trainable_4, _ = saved(workdir, 4)
  sizes = lambda tree: sum(int(np.prod(v.shape)) for v in tree.values())
  assert summary['trainable_parameters'] == sizes(trainable_4)
  assert summary['total_parameters'] == sizes(trainable_4) + sizes(frozen)
  # What the method's rules train moves in the second epoch, all of it: except the LayerNorm
  # scales inside PCSA, whose first updates (through zero-initialised layers that have just
  # started to move) are ~1e-11, below float32 resolution at 1.0.
  moved = {p for p, v in trainable_4.items() if not np.array_equal(v, trainable_2[p])}
  assert moved == {p for p in trainable_4 if not ('/pcsa/' in p and p.endswith('/scale'))}
  labels = partition.flatten(partition.label_params(partition.unflatten(
      {**trainable_4, **frozen}), partition.METHOD_RULES[method]))
  assert {p for p, l in labels.items() if l == partition.TRAINABLE} == set(trainable_4)
  if method == 'full':
    assert not frozen
  else:
    assert {'encoder/fc1/kernel', 'blocks_0/attn/qkv/kernel', 'norm/scale'} <= set(frozen)
  if method == 'full':
    check_tsne_in_process(config, workdir)
  if method == 'idpt':
    check_tsne_command(config, data_dir, workdir)


def check_tsne_outputs(workdir, feature_dim):
  emb = np.load(os.path.join(workdir, 'tsne_test.npy'))
  labels = np.load(os.path.join(workdir, 'tsne_test_labels.npy'))
  assert emb.shape == (12, 2) and emb.dtype == np.float32 and labels.shape == (12,)
  np.testing.assert_array_equal(emb.min(axis=0), [0, 0])  # min-max normalised per axis
  np.testing.assert_array_equal(emb.max(axis=0), [1, 1])
  assert set(labels.tolist()) <= set(range(4))
  with open(os.path.join(workdir, 'tsne_test.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def check_tsne_in_process(config, workdir):
  from dapt_jax import tsne  # pylint: disable=g-import-not-at-top
  r = tsne.run(config, workdir)
  assert (r['num_samples'], r['feature_dim'], r['split']) == (12, 2 * 32, 'test')
  assert 'best checkpoint' in r['checkpoint']
  check_tsne_outputs(workdir, 64)
  # The embedding is a function of the features and the fixed seed: a second run is identical.
  first = np.load(r['npy'])
  tsne.run(config, workdir)
  np.testing.assert_array_equal(np.load(r['npy']), first)


def check_tsne_command(config, data_dir, workdir):
  """main.py --mode=tsne on the trained IDPT run: head input [cls, prompt, patch max] = 3C."""
  args = [sys.executable, 'main.py', '--config=configs/synthetic.py', f'--workdir={workdir}',
          '--mode=tsne', '--config.progress_bar=False']
  for k, v in {**dict(config.model), **{f'data.{k}': v for k, v in dict(config.data).items()},
               'eval.batch_size': config.eval.batch_size, 'batch_size': config.batch_size,
               'num_epochs': config.num_epochs, 'parallel': config.parallel}.items():
    if '.' not in k and k in dict(config.model):
      k = f'model.{k}'
    if v is None or isinstance(v, (tuple, list)):
      continue
    args.append(f'--config.{k}={v}')
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')
  r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert 't-SNE of 12 test clouds (96-D head input)' in r.stdout, r.stdout
  check_tsne_outputs(workdir, 96)
