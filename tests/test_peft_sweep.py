"""The comparison command: python -m dapt_jax.sweep --methods=... (one run per method and seed,
a row per method in summary.json / summary.md: trainable parameters, final- and best-epoch
accuracy mean ± std, the published figure, step time and peak memory per sample from the runs'
own logs). Planning and tables in-process; one end-to-end sweep of two methods on the synthetic
set with a tiny model."""
import json
import os
import subprocess
import sys

import pytest

from configs import scanobjectnn
from dapt_jax import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_methods_axis_plans_one_run_per_method_and_seed():
  config = scanobjectnn.get_config('hardest')
  runs = sweep.plan_runs(config, {'methods': 'idpt,full,idpt', 'seeds': '0,1'}, [])
  assert [r.name for r in runs] == ['idpt_seed0', 'idpt_seed1', 'full_seed0', 'full_seed1']
  assert runs[2].overrides == ('--config.model.peft=full', '--config.seed=0')
  assert sweep.run_config(config, runs[1]).model.peft == 'idpt'
  with pytest.raises(sweep.SweepError, match="'prefix' is not one of dapt"):
    sweep.plan_runs(config, {'methods': 'dapt,prefix', 'seeds': '0'}, [])
  with pytest.raises(sweep.SweepError, match='--config.model.peft=lora conflicts with --methods'):
    sweep.plan_runs(config, {'methods': 'dapt', 'seeds': '0'}, ['--config.model.peft=lora'])


def test_method_rows_and_markdown():
  config = scanobjectnn.get_config('hardest')
  row = lambda m, s, final, best, step, peak: {
      'run': f'{m}_seed{s}', 'method': m, 'seed': s, 'status': 'finished',
      'final_accuracy': final, 'best_accuracy': best, 'best_epoch': 3, 'step_time_s': step,
      'peak_bytes_per_sample': peak, 'peak_source': 'device allocator'}
  rows = [row('dapt', 0, 0.84, 0.86, 0.2, 2**20), row('dapt', 1, 0.82, 0.85, 0.4, 3 * 2**20),
          row('lora', 0, 0.80, 0.81, 0.1, 2**20),
          {'run': 'lora_seed1', 'method': 'lora', 'seed': 1, 'status': 'unfinished'}]
  counts = {'dapt': {'trainable': 1_087_771, 'total': 22_912_795},
            'lora': {'trainable': 489_487, 'total': 22_314_511}}
  s = sweep.summarize(rows, config, 'python -m dapt_jax.sweep ...', counts)
  dapt, lora = s['methods']['dapt'], s['methods']['lora']
  assert dapt['final_accuracy']['mean'] == pytest.approx(0.83)
  assert dapt['final_accuracy']['std'] == pytest.approx(0.01)  # population
  assert dapt['step_time_s']['mean'] == pytest.approx(0.3)
  assert dapt['peak_bytes_per_sample']['mean'] == pytest.approx(2 * 2**20)
  assert (dapt['published'], lora['published']) == (85.08, None)  # SPEC §9; none for LoRA
  assert (lora['runs'], lora['finished'], lora['trainable_parameters']) == (2, 1, 489_487)
  md = sweep.format_markdown(s)
  assert '| dapt | 1,087,771 | 83.00 ± 1.00 | 85.50 ± 0.50 | 85.08 | 300 | 2.0 | 2/2 |' in md
  assert '| lora | 489,487 | 80.00 ± 0.00 | 81.00 ± 0.00 | — | 100 | 1.0 | 1/2 |' in md
  assert 'peak: device allocator' in md
  json.dumps(s)


def test_resources_from_a_runs_own_logs(tmp_path):
  (tmp_path / 'config.json').write_text(json.dumps({'batch_size': 32}))
  records = [{'split': 'train', 'step': i, 'samples_per_second': sps, 'peak_rss_bytes': rss}
             for i, (sps, rss) in enumerate([(10.0, 5), (320.0, 7), (160.0, 9), (200.0, 8)])]
  records.append({'split': 'eval', 'step': 4, 'accuracy': 0.5})
  (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))
  got = sweep._resources(str(tmp_path))  # pylint: disable=protected-access
  assert got['step_time_s'] == pytest.approx(32 / 180.0)  # median of the four rates
  assert (got['peak_bytes'], got['peak_source']) == (9, 'host RSS')
  assert got['peak_bytes_per_sample'] == pytest.approx(9 / 32)


TINY = ('--config.model.trans_dim=32', '--config.model.encoder_dims=32', '--config.model.depth=1',
        '--config.model.num_heads=2', '--config.model.num_group=8', '--config.model.group_size=8',
        '--config.model.rank=4', '--config.model.num_classes=4', '--config.model.lora_rank=2',
        '--config.data.num_points=64', '--config.data.point_all=80',
        '--config.data.synthetic_points=128', '--config.data.synthetic_num_train=32',
        '--config.data.synthetic_num_test=12', '--config.data.synthetic_num_classes=4',
        '--config.batch_size=8', '--config.eval.batch_size=8', '--config.num_epochs=1',
        '--config.progress_bar=False', '--config.log_every_steps=1', '--config.parallel=shard_map')


def test_comparison_command_end_to_end(tmp_path):
  workdir = tmp_path / 'peft'
  out = subprocess.run(
      [sys.executable, '-m', 'dapt_jax.sweep', '--config=configs/synthetic.py',
       f'--workdir={workdir}', '--methods=linear,lora', '--seeds=0', *TINY,
       f'--config.data.tfds_data_dir={tmp_path / "tfds"}'],
      cwd=ROOT, capture_output=True, text=True, timeout=1200,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''})
  assert out.returncode == 0, out.stderr[-3000:]
  s = json.loads((workdir / 'summary.json').read_text())
  assert [r['run'] for r in s['runs']] == ['linear_seed0', 'lora_seed0']
  assert set(s['methods']) == {'linear', 'lora'}
  for method, m in s['methods'].items():
    assert m['finished'] == 1 and 0.0 <= m['final_accuracy']['mean'] <= 1.0
    assert m['step_time_s']['mean'] > 0 and m['peak_bytes_per_sample']['mean'] > 0
  # LoRA trains its rank-2 updates on top of linear probing's class token + head.
  lin, lora = s['methods']['linear'], s['methods']['lora']
  assert lora['trainable_parameters'] - lin['trainable_parameters'] == 2 * (4 * 32 + 2 * 32)
  assert lora['total_parameters'] - lin['total_parameters'] == 2 * (4 * 32 + 2 * 32)
  md = (workdir / 'summary.md').read_text()
  assert '## Methods' in md and '| lora |' in md
