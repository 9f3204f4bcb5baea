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
