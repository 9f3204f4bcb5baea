"""The benchmark's measuring function and its Markdown report, on a tiny model (no timing
assertions: the figures are whatever this machine gives)."""
import pytest

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


def test_jax_record_and_markdown():
  rec = runner.measure(_tiny_spec())
  assert rec['status'] == 'ok', rec.get('error')
  for field in runner.RECORD_FIELDS:
    assert field in rec
  for field in ('compile_s', 'step_s', 'samples_per_s', 'peak_bytes', 'baseline_rss_bytes',
                'eval_samples_per_s', 'group_s', 'group_share', 'train_view_s'):
    assert rec[field] is not None and rec[field] > 0, field
  assert len(rec['step_times_s']) == 2
  assert rec['loss_finite']
  assert 0 < rec['trainable_params'] < rec['total_params']
  assert rec['peak_source'] in ('process peak RSS', 'device peak_bytes_in_use')

  md = report.render_markdown([rec], {'device': rec['device']})
  assert '| mode | batch |' in md
  assert f"{rec['samples_per_s']:.2f}" in md
  assert f"{rec['step_s'] * 1e3:.0f}" in md
  assert 'DAPT' in md and 'Targets' in md
  assert rec['device'] in md


def test_report_ratios_from_records():
  """The renderer pairs JAX and PyTorch records and computes the ratios."""
  def rec(fw, mode, sps, mem):
    r = {f: None for f in runner.RECORD_FIELDS}
    r.update(framework=fw, mode=mode, batch=32, num_points=2048, num_group=128, dtype='float32',
             status='ok', samples_per_s=sps, step_s=32 / sps, compile_s=1.0, platform='cpu',
             peak_bytes=mem * 2**20, peak_net_bytes=mem * 2**20, trainable_params=10)
    return r
  records = [rec('jax', 'dapt', 4.0, 400), rec('torch', 'dapt', 2.0, 800),
             rec('jax', 'full', 2.0, 1000), rec('torch', 'full', 1.0, 1200)]
  md = report.render_markdown(records)
  assert '2.00×' in md          # JAX / PyTorch throughput
  assert '0.50×' in md          # JAX / PyTorch memory
  lines = report.targets(records)
  assert 'memory' in lines[0] and '40%' in lines[0] and 'met' in lines[0]
  assert '50%' in lines[1] and 'met' in lines[1]
  assert '2.00×' in lines[2] and 'NOT' not in lines[2]
  assert 'not measured' in lines[3]


def test_child_failure_is_recorded():
  """A child that cannot run returns an error record instead of raising."""
  records = runner.run(
      runner.Plan(quick=True, frameworks=['jax'], modes=['dapt'], batches=[4], max_batch=4,
                  scaling=False, bf16=False, warmup=1, steps=1),
      log=lambda s: None,
      child=lambda spec: {**{f: None for f in runner.RECORD_FIELDS}, **spec,
                          'status': 'error', 'error': 'boom'})
  assert [r['status'] for r in records] == ['error']
  assert 'did not finish' in report.render_markdown(records)
