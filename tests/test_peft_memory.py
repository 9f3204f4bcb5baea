"""python -m dapt_jax.bench --memory-sweep (dapt_jax/bench/memory_sweep.py): XLA's compiled
estimate for every configuration, a measurement where it fits, and a table and plot that say
which is which. A tiny model; the numbers themselves are benchmarks (docs), not asserted."""
import json

import pytest

from dapt_jax.bench import memory_sweep

TINY = {'trans_dim': 32, 'encoder_dims': 32, 'depth': 1, 'num_heads': 2, 'num_group': 16,
        'group_size': 8, 'rank': 4, 'idpt_k': 4, 'pgst_local': 8}


def test_estimate_everywhere_measurement_where_it_fits(monkeypatch, tmp_path):
  small = memory_sweep.measure('idpt', 2, TINY, 64)
  assert small['fits'] and small['measured_bytes'] > 0 and small['loss_finite']
  assert small['estimate_bytes'] == (small['analysis']['argument'] + small['analysis']['output']
                                     + small['analysis']['temp'] - small['analysis']['alias'])
  assert small['analysis']['alias'] > 0  # the training state is donated
  assert small['trainable_params'] < small['total_params']
  # Pretend the machine is full: the estimate alone, nothing run.
  monkeypatch.setattr(memory_sweep, 'HOST_FIT_FRACTION', 0.0)
  monkeypatch.setattr(memory_sweep, 'DEVICE_FIT_FRACTION', 0.0)
  large = memory_sweep.measure('idpt', 8, TINY, 64)
  assert not large['fits'] and large['measured_bytes'] is None
  assert large['estimate_bytes'] > small['estimate_bytes']  # activations grow with the batch

  records = [small, large]
  md = memory_sweep.render_markdown(records, {'devices': 'test'})
  assert '| idpt | ' in md and ' m |' in md and ' e |' in md
  png = tmp_path / 'm.png'
  memory_sweep.plot(records, str(png), 'test')
  assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  json.dumps(records)  # what memory_sweep.json holds


def test_bad_methods_are_a_usage_error(tmp_path):
  from dapt_jax.bench import __main__ as bench_main  # pylint: disable=g-import-not-at-top
  with pytest.raises(bench_main.UsageError, match="'prefix' is not one of dapt"):
    bench_main.main(['--memory-sweep', '--methods=dapt,prefix', f'--out={tmp_path}'])
  with pytest.raises(bench_main.UsageError, match='only with --memory-sweep'):
    bench_main.main(['--methods=dapt', f'--out={tmp_path}'])


def test_measure_up_to_runs_only_the_small_batches(monkeypatch):
  """--measure-up-to B: batches above B get the estimate alone and say why in the table."""
  calls = []

  def fake_child(method, batch, model, num_points, run, timeout_s=None):
    calls.append((batch, run))
    return {'method': method, 'batch': batch, 'fits': True, 'estimate_bytes': batch,
            'measured_bytes': batch if run else None}

  monkeypatch.setattr(memory_sweep, 'run_child', fake_child)
  records = memory_sweep.sweep(['dapt'], [16, 32, 64], {}, 64, log=lambda s: None,
                               measure_up_to=32)
  assert calls == [(16, True), (32, True), (64, False)]
  assert 'not_run' not in records[0] and 'measure-up-to 32' in records[2]['not_run']
  assert 'measure-up-to 32' in memory_sweep.render_markdown(records, {'devices': 'test'})


def test_measure_up_to_needs_the_memory_sweep(tmp_path):
  from dapt_jax.bench import __main__ as bench_main  # pylint: disable=g-import-not-at-top
  with pytest.raises(bench_main.UsageError, match='only with --memory-sweep'):
    bench_main.main(['--measure-up-to=32', f'--out={tmp_path}'])
  with pytest.raises(bench_main.UsageError, match='must be >= 1'):
    bench_main.main(['--memory-sweep', '--measure-up-to=0', f'--out={tmp_path}'])
