"""PEFT methods beside DAPT (dapt_jax/models/peft): SPEC §9's trainable counts for PB-T50-RS, the
partition rules, zero-initialised additions that start from the backbone's function, and
config errors. Numerical fidelity against PyTorch references: tests/test_peft_parity.py."""
import importlib
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dapt_jax.models import classifier as model_lib
from dapt_jax import partition
from dapt_jax.models import peft
from dapt_jax import summary as summary_lib

# SPEC §9 (ScanObjectNN PB-T50-RS, 15 classes): trainable parameters. LoRA and the adapter are
# the project's designs; their counts follow from README's formulas (checked below too).
SPEC_TRAINABLE = {
    'full': 22_093_327,
    'linear': 268_303,
    'vpt_deep': 360_463,
    'idpt': 1_696_783,
    'pointgst': 622_831,
    'dapt': 1_087_771,
}
HEAD_AND_CLS = 268_303        # cls_token + cls_pos (768) + the head on 2C = 768 inputs
BACKBONE = 21_825_024         # Point-MAE's encoder (SPEC §6.5)
C, DEPTH = 384, 12
DESIGN_TRAINABLE = {
    # rank 8 on qkv (C→3C) and proj (C→C): r·(C + 3C) + r·(C + C) per block
    'lora': HEAD_AND_CLS + DEPTH * 8 * (4 * C + 2 * C),
    # two adapters per block, bottleneck 32: down C·d + d, up d·C + C
    'adapter': HEAD_AND_CLS + DEPTH * 2 * (2 * C * 32 + 32 + C),
}

TINY = dict(trans_dim=32, encoder_dims=32, depth=2, num_heads=2, mlp_ratio=2.0, num_group=16,
            group_size=8, rank=4, num_classes=5, drop_path_rate=0.0, drop_adapter_rate=0.0,
            head_tokens=('cls', 'patch'), freeze_bn_stats=False, dtype='float32',
            head_dropout_rate=0.0, vpt_prompts=3, idpt_k=4, idpt_prompt_layer=-1, pgst_rank=6,
            pgst_local=8, lora_rank=4, lora_alpha=8.0, adapter_dim=4)


def hardest(method):
  cfg = importlib.import_module('configs.scanobjectnn').get_config('hardest')
  cfg.unlock()
  cfg.model.peft = method
  cfg.lock()
  return cfg


@pytest.mark.parametrize('method', list(SPEC_TRAINABLE) + list(DESIGN_TRAINABLE))
def test_trainable_counts_for_pb_t50_rs(method):
  """What --mode=summary prints (built from the config alone, shapes only)."""
  cfg = hardest(method)
  params = summary_lib.parameter_shapes(cfg)['params']
  counts = partition.count(params, partition.label_params(params, partition.rules_for(cfg)))
  want = {**SPEC_TRAINABLE, **DESIGN_TRAINABLE}[method]
  assert counts['total']['trainable'] == want
  table = summary_lib.summarize(cfg)
  total_lines = [l for l in table.splitlines() if l.startswith('total')]
  assert len(total_lines) == 2 and all(f'{want:,}' in l for l in total_lines)
  assert f'method: {method};' in table
  if method != 'dapt':
    # The backbone is Point-MAE's encoder plus the head and class token, whatever the method.
    frozen_backbone = sum(counts[m]['total'] for m in ('encoder', 'pos_embed', 'norm'))
    blocks = sum(math.prod(x.shape) for p, x in partition.flatten(params).items()
                 if p.startswith('blocks_') and p.split('/')[1] in ('norm1', 'attn', 'norm2', 'mlp')
                 and '/lora_' not in p)
    assert frozen_backbone + blocks == BACKBONE
  if method == 'pointgst':  # SPEC §9: 29,544 per PCSA
    assert counts['blocks_0']['trainable'] == 29_544
  if method == 'idpt':      # SPEC §9: the prompt module 1,330,176 (+ its frozen position)
    assert counts['idpt'] == {'trainable': 1_330_176, 'total': 1_330_176 + C}


def _trainable_paths(method, **overrides):
  cfg = dict(TINY, peft=method, **overrides)
  net = model_lib.build_model(cfg)
  params = jax.eval_shape(lambda k: model_lib.init_variables(net, k, 64),
                          jax.random.PRNGKey(0))['params']
  labels = partition.flatten(partition.label_params(params, partition.METHOD_RULES[method]))
  return {p for p, l in labels.items() if l == partition.TRAINABLE}, set(labels)


def test_partition_rules_pick_each_methods_additions():
  cls_head = lambda paths: {p for p in paths if p.startswith(('cls_', 'head/'))}
  for method in ('linear', 'vpt_deep', 'idpt', 'pointgst', 'lora', 'adapter'):
    trainable, every = _trainable_paths(method)
    assert cls_head(every) <= trainable, method
    assert not any(p.startswith(('encoder/', 'pos_embed/', 'norm/')) for p in trainable), method
    backbone_blocks = {p for p in every if p.startswith('blocks_')
                       and p.split('/')[1] in ('norm1', 'attn', 'norm2', 'mlp')
                       and '/lora_' not in p}
    assert not backbone_blocks & trainable, method
    extra = trainable - cls_head(every)
    if method == 'linear':
      assert not extra
    elif method == 'vpt_deep':
      assert extra == {f'vpt/prompt{s}_{i}' for s in ('', '_pos') for i in range(2)}
    elif method == 'idpt':
      assert 'idpt/prompt_pos' in every and 'idpt/prompt_pos' not in trainable
      assert extra == {p for p in every if p.startswith('idpt/')} - {'idpt/prompt_pos'}
    elif method == 'pointgst':
      assert extra == {p for p in every if '/pcsa/' in p} and len(extra) == 2 * 10
    elif method == 'lora':
      assert extra == {f'blocks_{i}/attn/{m}/lora_{ab}' for i in range(2) for m in ('qkv', 'proj')
                       for ab in 'ab'}
    elif method == 'adapter':
      assert extra == {p for p in every if '/adapter1/' in p or '/adapter2/' in p}
      assert len(extra) == 2 * 2 * 4
  trainable, every = _trainable_paths('full')
  assert trainable == every


def _apply(method, params, batch_stats, pts, **overrides):
  net = model_lib.build_model(dict(TINY, peft=method, **overrides))
  return jax.jit(lambda v, x: net.apply(v, x, train=False))(
      {'params': params, 'batch_stats': batch_stats}, pts)


@pytest.mark.parametrize('method', ['lora', 'adapter', 'pointgst'])
def test_zero_initialised_additions_start_from_the_backbone(method):
  """LoRA's B, the adapters' up projections and PCSA's up projection start at zero, so the model
  is Point-MAE's plain classifier (same backbone and head) until they train."""
  pts = np.random.default_rng(0).normal(size=(3, 64, 3)).astype(np.float32)
  net = model_lib.build_model(dict(TINY, peft=method))
  variables = model_lib.init_variables(net, jax.random.PRNGKey(1), 64)
  plain = {p: v for p, v in partition.flatten(variables['params']).items()
           if '/lora_' not in p and '/adapter' not in p and '/pcsa/' not in p}
  apply = jax.jit(lambda v, x: net.apply(v, x, train=False))
  got = apply(variables, pts)
  want = _apply('linear', partition.unflatten(plain), variables['batch_stats'], pts)
  # Two differently compiled float32 programs: equal up to a few roundings (logits ~0.1).
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6, rtol=0)
  # ...and they do change the function once non-zero.
  flat = partition.flatten(variables['params'])
  # (random values: a constant added to every channel would vanish in the next LayerNorm)
  noise = lambda v: 0.1 * np.random.default_rng(v.size).normal(size=v.shape).astype(v.dtype)
  bumped = {p: (v + noise(v) if ('lora_b' in p or '/up/' in p) else v) for p, v in flat.items()}
  moved = apply({'params': partition.unflatten(bumped),
                 'batch_stats': variables['batch_stats']}, pts)
  assert np.abs(np.asarray(moved) - np.asarray(want)).max() > 1e-3


def test_position_embedding_before_every_block_except_dapt():
  """Point-MAE adds pos before every block: with zero blocks' residual branches that is
  x + depth·pos at the end; DAPT adds it once."""
  pts = np.random.default_rng(1).normal(size=(2, 64, 3)).astype(np.float32)
  cfg = dict(TINY, peft='linear', depth=3)
  net = model_lib.build_model(cfg)
  variables = model_lib.init_variables(net, jax.random.PRNGKey(2), 64)
  flat = partition.flatten(variables['params'])
  # Zero the attention and MLP outputs: every block is then the identity on its input.
  flat = {p: (jnp.zeros_like(v) if p.startswith('blocks_') and ('/proj/' in p or '/fc2/' in p)
              else v) for p, v in flat.items()}
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from dapt_jax.models import tokenizer  # pylint: disable=g-import-not-at-top

  @jax.jit
  def run(variables, pts):
    captured = {}

    def grab(next_fun, args, kwargs, context):
      if context.module.name == 'norm' and context.method_name == '__call__':
        captured['x'] = args[0]
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(grab):
      net.apply(variables, pts, train=False)
    neighborhood, centers = net.tokenize(pts)
    pos = tokenizer.PosEmbed(32).apply({'params': variables['params']['pos_embed']}, centers)
    tokens = tokenizer.PatchEncoder(32, True).apply(
        {'params': variables['params']['encoder'],
         'batch_stats': variables['batch_stats']['encoder']}, neighborhood)
    return captured['x'], tokens, pos

  x, tokens, pos = run({'params': partition.unflatten(flat),
                        'batch_stats': variables['batch_stats']}, pts)
  np.testing.assert_allclose(np.asarray(x[:, 1:]), np.asarray(tokens + 3 * pos), atol=1e-5)
  cls = x[:, 0]
  want_cls = variables['params']['cls_token'][0, 0] + 3 * variables['params']['cls_pos'][0, 0]
  np.testing.assert_allclose(np.asarray(cls), np.broadcast_to(want_cls, cls.shape), atol=1e-6)


@pytest.mark.parametrize('override,field', [
    (dict(peft='prefix'), 'model.peft'),
    (dict(peft='idpt', idpt_k=17), 'model.idpt_k'),
    (dict(peft='idpt', idpt_prompt_layer=2), 'model.idpt_prompt_layer'),
    (dict(peft='pointgst', pgst_local=5), 'model.pgst_local'),
    (dict(peft='pointgst', pgst_rank=0), 'model.pgst_rank'),
    (dict(peft='vpt_deep', vpt_prompts=0), 'model.vpt_prompts'),
    (dict(peft='lora', lora_alpha=0.0), 'model.lora_alpha'),
    (dict(peft='adapter', adapter_dim=-1), 'model.adapter_dim'),
])
def test_bad_method_settings_are_one_line_errors_naming_the_field(override, field):
  with pytest.raises(model_lib.ModelConfigError, match=field.replace('.', r'\.')) as e:
    model_lib.build_model(dict(TINY, **override))
  assert '\n' not in str(e.value)


def test_rules_for_uses_the_method_unless_rules_are_given():
  cfg = hardest('pointgst')
  assert partition.rules_for(cfg) == partition.METHOD_RULES['pointgst']
  cfg.unlock()
  cfg.partition_rules = partition.LINEAR_PROBE_RULES
  assert partition.rules_for(cfg) == partition.LINEAR_PROBE_RULES
  assert set(partition.METHOD_RULES) == set(peft.METHODS)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')
  return subprocess.run([sys.executable, 'main.py', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_main_summary_mode_needs_no_data_or_workdir():
  out = _main('--config=configs/scanobjectnn.py:hardest', '--mode=summary',
              '--config.model.peft=pointgst', '--config.data.data_dir=/nonexistent')
  assert out.returncode == 0, out.stderr
  assert 'partition.METHOD_RULES' in out.stdout and '/pcsa/' in out.stdout
  assert 'blocks_*/pcsa/down (x12)' in out.stdout
  assert [l for l in out.stdout.splitlines() if l.startswith('total')][-1].split()[1:3] == [
      '622,831', '22,447,855']
  bad = _main('--config=configs/scanobjectnn.py:hardest', '--mode=summary',
              '--config.model.peft=prefix')
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1].startswith("error: config.model.peft='prefix'")
  assert 'Traceback' not in bad.stderr


@pytest.mark.parametrize('method,pieces', [('dapt', 2), ('idpt', 3)])
def test_tsne_features_are_what_the_head_reads(method, pieces):
  """--mode=tsne embeds the head's input: the head applied to it gives the model's logits."""
  from dapt_jax import tsne  # pylint: disable=g-import-not-at-top
  net = model_lib.build_model(dict(TINY, peft=method))
  variables = model_lib.init_variables(net, jax.random.PRNGKey(4), 64)
  pts = np.random.default_rng(3).normal(size=(3, 64, 3)).astype(np.float32)
  head = model_lib.ClassifierHead(5, 0.0)

  @jax.jit
  def run(variables, pts):
    f = tsne.head_input(net, variables, pts)
    via_head = head.apply({'params': variables['params']['head'],
                           'batch_stats': variables['batch_stats']['head']}, f, False)
    return f, via_head, net.apply(variables, pts, train=False)

  f, via_head, logits = run(variables, pts)
  assert f.shape == (3, pieces * 32)
  np.testing.assert_allclose(np.asarray(via_head), np.asarray(logits), atol=1e-6, rtol=0)
