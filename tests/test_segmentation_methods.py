"""Every PEFT method on the part segmenter (config.model.peft with configs/shapenetpart.py): it
builds, --mode=summary counts what its rules train, and one training step of the shared step
function moves exactly the trainable parameters. A tiny model (2 blocks, width 16) on random
batches; the segmentation task's end-to-end training is tests/test_segmentation_task.py."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import shapenetpart
from dapt_jax import optim
from dapt_jax import partition
from dapt_jax import steps as steps_lib
from dapt_jax import summary as summary_lib
from dapt_jax import tasks
from dapt_jax.models import peft
from tests.conftest import ROOT

# One parameter each method adds (None: it adds nothing), and whether the segmenter gets a class
# token with it (DAPT inserts its prompts after one; Point-MAE's network has none).
ADDED = {
    'dapt': 'blocks_0/adapter/down_proj/kernel', 'full': None, 'linear': None,
    'vpt_deep': 'vpt/prompt_1', 'idpt': 'idpt/conv1/kernel', 'pointgst': 'blocks_1/pcsa/down/kernel',
    'lora': 'blocks_0/attn/qkv/lora_a', 'adapter': 'blocks_1/adapter2/up/kernel',
}
TINY = {'trans_dim': 16, 'encoder_dims': 16, 'depth': 2, 'num_heads': 2, 'num_group': 8,
        'group_size': 8, 'rank': 4, 'feature_blocks': (0, 1), 'label_dims': 4,
        'propagation_dims': (16,), 'head_dims': (8, 8), 'num_classes': 3, 'num_parts': 5,
        'vpt_prompts': 2, 'idpt_k': 4, 'pgst_rank': 4, 'pgst_local': 4, 'lora_rank': 2,
        'adapter_dim': 4, 'drop_path_rate': 0.0, 'head_dropout_rate': 0.0}
POOL, BATCH = 96, 4
SEG_HEAD = ('label_conv/', 'propagation_0/', 'convs1/', 'convs2/', 'convs3/', 'bns1/', 'bns2/')


def test_the_registry_lists_every_method_once():
  assert sorted(ADDED) == sorted(peft.METHODS) and len(set(peft.METHODS)) == 8


def tiny_config(method):
  c = shapenetpart.get_config('synthetic')
  c.unlock()
  c.model.update(peft=method, **TINY)
  c.data.update(num_points=64, point_all=64, pool_points=POOL, synthetic_num_categories=3)
  c.update(batch_size=BATCH, parallel='shard_map')
  c.lock()
  return c


def random_batch(seed):
  rng = np.random.default_rng(seed)
  return {'points': rng.normal(size=(BATCH, POOL, 3)).astype(np.float32),
          'part': rng.integers(0, TINY['num_parts'], (BATCH, POOL)).astype(np.int32),
          'num_points': np.full((BATCH,), POOL, np.int32),
          'category': rng.integers(0, TINY['num_classes'], (BATCH,)).astype(np.int32),
          'index': np.arange(BATCH, dtype=np.int32)}


@pytest.mark.parametrize('method', sorted(ADDED))
def test_method_builds_summarises_and_trains_a_step(method):
  config = tiny_config(method)
  params = summary_lib.parameter_shapes(config)['params']
  flat = partition.flatten(params)
  if ADDED[method]:
    assert ADDED[method] in flat
  assert ('cls_token' in flat) == (method == 'dapt')
  rules = partition.rules_for(config)
  labels = partition.flatten(partition.label_params(params, rules))
  trainable = {p for p, l in labels.items() if l == partition.TRAINABLE}
  # The whole segmentation head trains with every method; the backbone only with `full`.
  assert {p for p in flat if p.startswith(SEG_HEAD)} <= trainable
  backbone = {'encoder/fc1/kernel', 'blocks_0/attn/qkv/kernel', 'norm/scale'}
  assert (backbone <= trainable) if method == 'full' else not backbone & trainable
  if ADDED[method] and method != 'full':
    assert ADDED[method] in trainable
  size = lambda paths: sum(int(np.prod(flat[p].shape)) for p in paths)
  text = summary_lib.summarize(config)
  assert f'method: {method}' in text
  assert f'{size(trainable):,}' in text.splitlines()[-1] and f'{size(flat):,}' in text

  # One step of the shared training step: the trainable parameters move, the frozen ones are not
  # even in the optimizer's reach (they live in another tree).
  task = tasks.get_task(config)
  net = task.build_model(axis_name=steps_lib.AXIS)
  variables = task.init_variables(task.build_model(), jax.random.PRNGKey(0))
  param_labels = partition.label_params(variables['params'], rules)
  tx = optim.make_optimizer(config.optim, param_labels, lambda step: 1e-2)
  state = steps_lib.create_state(variables, param_labels, tx, jax.random.PRNGKey(1))
  parallel = steps_lib.DataParallel('shard_map', BATCH, devices=jax.devices()[:1])
  train_step, _ = steps_lib.make_task_steps(parallel, task, net, tx)
  before = jax.tree.map(np.asarray, state.trainable)
  new_state, metrics = train_step(parallel.put_state(state), parallel.put_batch(random_batch(0)))
  loss = float(np.asarray(parallel.unreplicate_metrics(metrics)['loss']))
  assert np.isfinite(loss) and loss > 0
  after = partition.flatten(jax.tree.map(np.asarray, parallel.get_state(new_state).trainable))
  assert set(after) == trainable
  moved = {p for p, v in partition.flatten(before).items() if not np.array_equal(v, after[p])}
  assert moved and moved <= trainable


def test_summary_through_main_py():
  r = subprocess.run([sys.executable, 'main.py', '--config=configs/shapenetpart.py:synthetic',
                      '--mode=summary', '--config.model.peft=lora'], cwd=ROOT, capture_output=True,
                     text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert r.returncode == 0, r.stderr[-2000:]
  assert 'method: lora' in r.stdout and '/lora_[ab]$' in r.stdout


SEG_SWEEP = ('--config.model.trans_dim=16', '--config.model.encoder_dims=16',
             '--config.model.depth=2', '--config.model.num_heads=2', '--config.model.num_group=8',
             '--config.model.group_size=8', '--config.model.rank=4',
             '--config.model.feature_blocks=(0, 1)', '--config.model.label_dims=4',
             '--config.model.propagation_dims=(16,)', '--config.model.head_dims=(8, 8)',
             '--config.model.num_classes=3', '--config.model.num_parts=8',
             '--config.model.vpt_prompts=2', '--config.data.num_points=64',
             '--config.data.point_all=64', '--config.data.synthetic_points=128',
             '--config.data.pool_points=128', '--config.data.synthetic_num_train=16',
             '--config.data.synthetic_num_test=8', '--config.data.synthetic_num_categories=3',
             '--config.batch_size=8', '--config.eval.batch_size=8', '--config.num_epochs=1',
             '--config.progress_bar=False', '--config.log_every_steps=1')


def test_methods_compare_on_segmentation_with_the_sweep(tmp_path):
  """python -m dapt_jax.sweep --methods=dapt,vpt_deep on configs/shapenetpart.py: a row per
  method, its counts and the instance mIoU of its run."""
  workdir = tmp_path / 'seg_methods'
  out = subprocess.run(
      [sys.executable, '-m', 'dapt_jax.sweep', '--config=configs/shapenetpart.py:synthetic',
       f'--workdir={workdir}', '--methods=dapt,vpt_deep', '--seeds=0', *SEG_SWEEP,
       f'--config.data.tfds_data_dir={tmp_path / "tfds"}'],
      cwd=ROOT, capture_output=True, text=True, timeout=900,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''})
  assert out.returncode == 0, out.stderr[-3000:]
  s = json.loads((workdir / 'summary.json').read_text())
  assert s['metric'] == 'instance_miou' and set(s['methods']) == {'dapt', 'vpt_deep'}
  for m in s['methods'].values():
    assert m['finished'] == 1 and 0.0 <= m['final_accuracy']['mean'] <= 1.0
    assert 0 < m['trainable_parameters'] < m['total_parameters']
  md = (workdir / 'summary.md').read_text()
  assert '| vpt_deep |' in md and 'Instance mIoU in %' in md
