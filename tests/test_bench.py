"""The benchmark's measuring function and its Markdown report, on a tiny model (no timing
assertions: the figures are whatever this machine gives)."""
import os

import jax
import jax.numpy as jnp
import pytest

from dapt_jax.bench import accelerator
from dapt_jax.bench import hlo_stats
from dapt_jax.bench import profile
from dapt_jax.bench import report
from dapt_jax.bench import runner
from dapt_jax.bench import spec as spec_lib

TINY = {'trans_dim': 32, 'encoder_dims': 32, 'depth': 1, 'num_heads': 2, 'rank': 8,
        'num_classes': 5}


def _tiny_spec(**kw):
  fields = dict(mode='dapt', batch=8, num_points=128, num_group=16, group_size=8, warmup=1,
                steps=2, eval=True, grouping=True, model=TINY)
  fields.update(kw)
  return spec_lib.make_spec(**fields)


def test_spec_rejects_unknown_fields():
  with pytest.raises(ValueError, match='unknown'):
    spec_lib.make_spec(batchsize=3)
  with pytest.raises(ValueError, match='mode'):
    spec_lib.make_spec(mode='lora')


def test_point_all_follows_the_release():
  assert spec_lib.point_all(1024) == 1200
  assert spec_lib.point_all(2048) == 2400


def test_jax_record_and_markdown(tmp_path):
  rec = runner.measure(_tiny_spec(profile_dir=str(tmp_path / 'profile')))
  assert rec['status'] == 'ok', rec.get('error')
  for field in runner.RECORD_FIELDS:
    assert field in rec
  for field in ('compile_s', 'step_s', 'samples_per_s', 'peak_bytes', 'baseline_rss_bytes',
                'eval_samples_per_s', 'group_s', 'group_share', 'train_view_s', 'state_bytes',
                'peak_net_bytes', 'xla_peak_bytes', 'flops_per_step', 'dot_flops_per_step',
                'bytes_accessed_per_step', 'entry_kernels'):
    assert rec[field] is not None and rec[field] > 0, field
  assert len(rec['step_times_s']) == 2
  assert rec['loss_finite']
  assert 0 < rec['trainable_params'] < rec['total_params']
  assert rec['peak_source'] in ('process peak RSS', 'device peak_bytes_in_use')
  # The sequential loops an accelerator runs: the training view's FPS over the whole cloud
  # (128 points: 127 iterations) and the tokenizer's FPS to 16 centres (15).
  assert rec['accelerator_loop_trips'] == [127, 15]
  assert rec['accelerator_iterations'] == 142
  assert rec['dot_groups']['blocks forward'] > 0 and rec['dot_groups']['blocks backward'] > 0
  # DAPT: no gradient reaches the frozen patch encoder, so it has no backward matmul.
  assert 'encoder backward' not in rec['dot_groups']
  prof = rec['profile']
  assert os.path.exists(prof['xplane']) and prof['ops'] and prof['total_ms'] > 0
  assert any(g['group'] == 'while loops (FPS)' for g in prof['groups'])

  md = report.render_markdown([rec], {'device': rec['device']})
  assert '| mode | batch |' in md
  assert f"{rec['samples_per_s']:.2f}" in md
  assert f"{rec['step_s'] * 1e3:.0f}" in md
  assert 'DAPT' in md and 'Targets' in md
  assert rec['device'] in md
  assert 'Projected' in md and 'What XLA compiles' in md and 'how each figure is made up' in md


def test_profile_table_needs_the_profile_role():
  table = {'source': 'test', 'total_ms': 10.0, 'steps': 1,
           'groups': [{'group': 'while loops (FPS)', 'ms': 6.0, 'ops': 1},
                      {'group': 'blocks: mlp', 'ms': 4.0, 'ops': 3}],
           'ops': [{'op': 'while.1', 'opcode': 'while', 'source': 'fps', 'calls': 1, 'ms': 6.0}]}
  text = profile.render(table)
  assert '| while loops (FPS) | 6.0 | 60.0% | 1 |' in text
  assert '| while.1 | while | fps | 1 | 6.00 | 60.0% |' in text


def test_hlo_stats_loops_and_matmul_flops():
  def f(a, b):
    def outer(i, x):
      return jax.lax.fori_loop(0, 7, lambda j, y: y * 1.0001 + j, x)
    return jax.lax.fori_loop(0, 3, outer, a @ b)
  compiled = jax.jit(f).lower(jnp.ones((16, 32)), jnp.ones((32, 8))).compile()
  text = compiled.as_text()
  loops = hlo_stats.while_loops(text)
  trips = sorted((l['trip_count'], l['runs_per_step']) for l in loops)
  assert trips == [(3, 1), (7, 3)]
  summary = hlo_stats.loop_summary(text)
  assert summary['accelerator_iterations'] == 3 + 7 * 3
  dots = hlo_stats.dot_flops(text)
  assert sum(d['flops'] for d in dots) == 2 * 16 * 8 * 32
  assert sum(d['bytes'] for d in dots) == 4 * (16 * 32 + 32 * 8 + 16 * 8)
  assert hlo_stats.source_label('jit(f)/transpose(jvp(M))/blocks_3/mlp/fc1/dot_general') == (
      'blocks_*/mlp/fc1/dot_general [bwd]')


def test_accelerator_projection_arithmetic():
  rec = {'dot_flops_per_step': 8 * 16e9, 'dot_bytes_per_step': 8e9, 'hlo_batch': 8,
         'bytes_accessed_per_step': 16e9, 'accelerator_loop_trips': [2047, 127],
         'entry_kernels': 1000, 'flops_per_step': 8 * 17e9}
  xla = accelerator.project(rec, batch=32)
  a = accelerator.ASSUMPTIONS
  assert xla['flops'] == pytest.approx(32 * 16e9)
  assert xla['low']['matmul_s'] == pytest.approx(
      32 * 16e9 / (accelerator.H100['tf32_flops'] * a['matmul_efficiency'][1]))
  assert xla['low']['loops_s'] == pytest.approx(2174 * a['xla_loop_iteration_s'][0])
  skip = accelerator.project(rec, batch=32, skip_full_fps=True)
  assert skip['loop_iterations'] == 127
  pallas = accelerator.project(rec, batch=32, fps_impl='pallas')
  assert pallas['high']['loops_s'] < xla['low']['loops_s']
  assert xla['low']['total_s'] < xla['high']['total_s']
  assert '| xla | off | 2174 |' in accelerator.render(rec)
  assert accelerator.project({'hlo_batch': 8}) is None


def test_report_ratios_from_records():
  """The renderer pairs JAX and PyTorch records and computes the ratios."""
  def rec(fw, mode, sps, mem, role='main', compile_s=1.0):
    r = {f: None for f in runner.RECORD_FIELDS}
    r.update(framework=fw, mode=mode, batch=32, num_points=2048, num_group=128, dtype='float32',
             status='ok', samples_per_s=sps, step_s=32 / sps, compile_s=compile_s,
             platform='cpu', peak_bytes=mem * 2**20, peak_net_bytes=mem * 2**20,
             trainable_params=10, role=role)
    return r
  records = [rec('jax', 'dapt', 4.0, 400), rec('torch', 'dapt', 2.0, 800),
             rec('jax', 'full', 2.0, 1000), rec('torch', 'full', 1.0, 1200),
             rec('jax', 'dapt', 4.2, 900, role='policy_all'),
             rec('jax', 'dapt', 1.0, 900, role='cache_first', compile_s=40.0),
             rec('jax', 'dapt', 1.0, 900, role='cache_second', compile_s=4.0)]
  md = report.render_markdown(records)
  assert '2.00×' in md          # JAX / PyTorch throughput
  assert '0.50×' in md          # JAX / PyTorch memory
  assert 'Second start / first start, compile time: 10%.' in md
  lines = report.targets(records)
  assert 'memory / full' in lines[0] and '40%' in lines[0] and 'met' in lines[0]
  assert 'JAX / PyTorch' in lines[1] and '0.50×' in lines[1] and 'NOT' not in lines[1]
  assert '50%' in lines[2] and 'met' in lines[2]
  assert '2.00×' in lines[3] and 'NOT' not in lines[3]        # DAPT throughput
  assert '2.00×' in lines[4] and 'NOT' not in lines[4]        # full fine-tuning
  assert 'linear' in lines[5] and 'not measured' in lines[5]
  assert 'remat_policy' in lines[6] and '105%' in lines[6] and 'NOT' not in lines[6]
  assert 'second start' in lines[7] and '10%' in lines[7] and 'NOT' not in lines[7]
  assert 'not measured' in lines[8]
  # The policy and cache runs are not the headline DAPT record.
  assert '| DAPT | 32 | 10 | 4.00 | 2.00 |' in md


def test_child_failure_is_recorded():
  """A child that cannot run returns an error record instead of raising."""
  records = runner.run(
      runner.Plan(quick=True, frameworks=['jax'], modes=['dapt'], batches=[4], max_batch=4,
                  scaling=False, bf16=False, warmup=1, steps=1, policies=()),
      log=lambda s: None,
      child=lambda spec: {**{f: None for f in runner.RECORD_FIELDS}, **spec,
                          'status': 'error', 'error': 'boom'})
  assert [r['status'] for r in records] == ['error']
  assert 'did not finish' in report.render_markdown(records)


def test_plan_adds_policy_cache_and_profile_runs(tmp_path):
  cache = tmp_path / 'cache'
  cache.mkdir()
  (cache / 'stale').write_text('x')  # the first start must find an empty cache
  specs = []

  def child(spec):
    specs.append(spec)
    if spec['compile_cache_dir']:
      assert not (cache / 'stale').exists()
    return {**{f: None for f in runner.RECORD_FIELDS}, **spec, 'status': 'ok'}

  records = runner.run(
      runner.Plan(quick=True, frameworks=['jax'], modes=['dapt'], batches=[4], max_batch=4,
                  scaling=False, bf16=False, warmup=1, steps=1, cache_dir=str(cache),
                  profile_dir=str(tmp_path / 'profile'), policies=('all',)),
      log=lambda s: None, child=child)
  assert [r['role'] for r in records] == ['main', 'policy_all', 'cache_first', 'cache_second',
                                          'profile']
  assert specs[1]['model'] == {'remat_policy': 'all'}
  assert specs[2]['compile_cache_dir'] == specs[3]['compile_cache_dir'] == str(cache)
  assert specs[0]['compile_cache_dir'] is None and specs[4]['profile_dir'].endswith('profile')


TINY_PREDICT_CONFIG = '''
from configs import synthetic


def get_config(arg=None):
  c = synthetic.get_config()
  c.data.num_points = 64
  c.model.update(trans_dim=32, encoder_dims=32, depth=1, num_heads=2, num_group=8, group_size=8)
  return c
'''


def test_predict_mode_measures_every_serving_path(tmp_path, capsys):
  """--predict on a tiny config: a record per path and batch size, and the Markdown table."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  import math  # pylint: disable=g-import-not-at-top
  from dapt_jax import errors  # pylint: disable=g-import-not-at-top
  from dapt_jax import onnx_export  # pylint: disable=g-import-not-at-top
  from dapt_jax.bench import __main__ as bench_main  # pylint: disable=g-import-not-at-top
  config = tmp_path / 'tiny.py'
  config.write_text(TINY_PREDICT_CONFIG)
  out = tmp_path / 'out'
  argv = ['--predict', f'--config={config}', f'--out={out}', '--batches=1,3', '--warmup=0',
          '--steps=1']
  assert errors.run_cli(bench_main.main, argv, exit=False) in (0, None)
  got = json.load(open(out / 'predict.json'))
  paths = ['predictor.predict', 'StableHLO artifact']
  if all(importlib.util.find_spec(p) for p in onnx_export.PACKAGES):
    paths.append('ONNX (onnxruntime)')
  assert [(r['path'], r['batch']) for r in got['records']] == [
      (p, b) for b in (1, 3) for p in paths]
  assert all(math.isfinite(r['clouds_per_s']) and r['clouds_per_s'] > 0
             for r in got['records'])
  assert 'depth 1, width 32, 8 groups of 8, 64 input points' in got['header']['model']
  md = (out / 'predict.md').read_text()
  assert '| path | batch 1 | batch 3 |' in md
  assert all(f'| {p} | ' in md for p in paths)
  capsys.readouterr()
  assert errors.run_cli(bench_main.main, ['--config=x.py', f'--out={tmp_path}/o'],
                        exit=False) == 2
  assert capsys.readouterr().err.strip() == (
      'error: --config=x.py: only with --predict')
