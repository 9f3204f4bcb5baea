"""Every PEFT method trains and evaluates end to end through the one training loop, on the
synthetic set with a tiny model (one block; 2 epochs of 2 steps, an evaluation after the second):
the logged counts are the partition's, what its rules train moves, the backbone is frozen."""
import os

import numpy as np
import orbax.checkpoint as ocp
import pytest

from dapt_jax import partition
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


@pytest.mark.parametrize('method', ['full', 'linear', 'vpt_deep', 'idpt', 'pointgst', 'lora',
                                    'adapter'])
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
