"""The demo's comparison rows (configs, equivalent commands, argument errors), its --out folder
(a file, foreign files and a wrong backbone are refused before anything there is written or
removed), and its frozen-feature probe (the classifier it fits, a run on the shipped backbone,
argument errors). Nothing trains."""

import os

import pytest

from dapt_jax import partition
from dapt_jax.demo import compare


@pytest.mark.parametrize('pose', ['so3', 'upright'])
def test_rows_share_the_recipe_and_differ_in_partition_and_start(pose):
  configs = {name: compare.row_config(name, '/bb', 4, seed=3, pose=pose)
             for name in compare.ROWS + compare.EXTRA_ROWS}
  for name, c in configs.items():
    assert (c.seed, c.num_epochs, c.optim.warmup_epochs, c.data.synthetic_pose) == (3, 4, 0, pose)
    assert c.init_from == ('/bb' if name.endswith('_pretrained') else None)
  assert configs['dapt_pretrained'].partition_rules == tuple(partition.DAPT_RULES)
  assert configs['dapt_random'].partition_rules == tuple(partition.DAPT_RULES)
  assert configs['linear_pretrained'].partition_rules == tuple(partition.LINEAR_PROBE_RULES)
  assert configs['full_pretrained'].partition_rules == tuple(partition.FULL_FINETUNE_RULES)
  assert configs['full_random'].partition_rules == tuple(partition.FULL_FINETUNE_RULES)


def test_pose_choices_are_the_generators():
  from dapt_jax.data import synthetic
  assert compare.POSES == synthetic.POSES


def test_command_lines_name_the_pose_only_when_it_is_not_the_default():
  plain = compare.command_line('dapt_pretrained', '/bb', 6, 'runs/demo/dapt_pretrained')
  assert plain.startswith('python main.py --config=configs/synthetic.py')
  assert '--config.init_from=/bb' in plain and 'synthetic_pose' not in plain
  upright = compare.command_line('dapt_random', '/bb', 6, 'w', pose='upright')
  assert '--config.data.synthetic_pose=upright' in upright and 'init_from' not in upright
  assert compare.command_line('full_pretrained', '/bb', 6, 'w', pose='upright').endswith(
      '--rows full_pretrained --epochs 6 --pose upright --backbone /bb')
  few = compare.command_line('dapt_random', None, 60, 'w', train_clouds=100)
  assert '--config.data.synthetic_num_train=100' in few
  few_config = compare.row_config('dapt_random', None, 6, train_clouds=100)
  assert few_config.data.synthetic_num_train == 100
  assert compare.row_config('dapt_random', None, 6).data.synthetic_num_train == 1024


def test_argument_mistakes_exit_2_with_one_line(tmp_path, capsys):
  out = tmp_path / 'out'
  assert compare.main(['--rows', 'dapt_random,bogus', '--out', str(out)]) == 2
  assert capsys.readouterr().err.strip() == ('error: --rows: unknown bogus; choose from '
                                            + ', '.join(compare.ROWS + compare.EXTRA_ROWS))
  assert compare.main(['--epochs', '0', '--out', str(out)]) == 2
  assert compare.main(['--train-clouds', '8', '--out', str(out)]) == 2
  assert 'need at least one batch' in capsys.readouterr().err
  assert compare.main(['--backbone', str(tmp_path / 'none'), '--out', str(out)]) == 2
  assert 'no such backbone directory' in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    compare.main(['--pose', 'sideways', '--out', str(out)])
  assert e.value.code == 2
  assert not out.exists()


def test_probe_separates_features_that_carry_the_label():
  import numpy as np
  from dapt_jax.demo import probe
  rng = np.random.default_rng(0)
  y_train, y_test = rng.integers(0, 3, 90), rng.integers(0, 3, 30)
  informative = lambda y: np.eye(3)[y] * 5 + rng.normal(size=(len(y), 3))  # noqa: E731
  assert probe.probe_accuracy(informative(y_train), y_train, informative(y_test), y_test) > 0.9
  noise = lambda y: rng.normal(size=(len(y), 3))  # noqa: E731
  assert probe.probe_accuracy(noise(y_train), y_train, noise(y_test), y_test) < 0.7


def test_probe_runs_on_random_and_pretrained_backbones(monkeypatch, capsys):
  from configs import synthetic as synthetic_config
  from dapt_jax.demo import probe
  small = synthetic_config.get_config()
  small.unlock()
  small.data.synthetic_num_train, small.data.synthetic_num_test = 40, 20
  small.lock()
  monkeypatch.setattr(synthetic_config, 'get_config', lambda arg=None: small)
  # The shipped backbone loads into the probe's model (same size); both rows are printed.
  assert probe.main(['--train-clouds', '20', '--pose', 'upright']) == 0
  rows = capsys.readouterr().out.splitlines()[1:]
  assert [r.split('%')[1].strip() for r in rows] == ['random', probe.DEFAULT_BACKBONE]
  assert all(0.0 <= float(r.split('%')[0]) <= 100.0 for r in rows)


def test_probe_argument_mistakes_exit_2(tmp_path, capsys):
  from dapt_jax.demo import probe
  assert probe.main(['--backbone', str(tmp_path / 'none')]) == 2
  assert 'no such directory' in capsys.readouterr().err
  assert probe.main(['--train-clouds', '3']) == 2
  assert 'at least one cloud per class' in capsys.readouterr().err


# --out: refusals come before anything is written, removed or trained (subprocesses, as a user
# runs the command; each ends within seconds because nothing trains).

def _compare(*args, timeout=120):
  import subprocess
  import sys
  return subprocess.run([sys.executable, '-m', 'dapt_jax.demo.compare', *args],
                        capture_output=True, text=True, timeout=timeout)


def _one_error_line(proc):
  assert proc.returncode == 2, proc.stderr
  assert 'Traceback' not in proc.stderr
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr
  return lines[0]


def test_out_naming_a_file_is_one_line_and_the_file_stays(tmp_path):
  target = tmp_path / 'notes.txt'
  target.write_text('mine\n')
  line = _one_error_line(_compare('--rows', 'dapt_random', '--out', str(target)))
  assert str(target) in line and 'is a file' in line
  line = _one_error_line(_compare('--rows', 'dapt_random', '--out', str(target / 'sub')))
  assert 'cannot be created' in line
  assert target.read_text() == 'mine\n'


def test_out_holding_foreign_files_is_refused_untouched(tmp_path):
  out = tmp_path / 'results'
  (out / 'dapt_random').mkdir(parents=True)
  (out / 'comparison.md').write_text('earlier\n')
  (out / 'thesis.tex').write_text('mine\n')
  line = _one_error_line(_compare('--rows', 'dapt_random', '--out', str(out)))
  assert "'thesis.tex'" in line
  assert sorted(p.name for p in out.iterdir()) == ['comparison.md', 'dapt_random', 'thesis.tex']
  assert (out / 'comparison.md').read_text() == 'earlier\n'


def test_wrong_backbone_is_refused_before_an_earlier_comparison_is_touched(tmp_path):
  # An earlier comparison's outputs (only names it writes) stay when the new run is refused.
  out = tmp_path / 'demo'
  (out / 'dapt_pretrained').mkdir(parents=True)
  (out / 'dapt_pretrained' / 'config.json').write_text('{}\n')
  (out / 'comparison.json').write_text('[]\n')
  before = sorted(str(p.relative_to(out)) for p in out.rglob('*'))
  # The fixture is a training workdir of a much smaller model: its shapes cannot fit.
  fixture = os.path.join(os.path.dirname(__file__), 'fixtures', 'workdir_v0')
  line = _one_error_line(_compare('--rows', 'dapt_pretrained', '--backbone', fixture,
                                  '--out', str(out)))
  assert line.startswith('error: dapt_pretrained: config.init_from=') and 'workdir_v0' in line
  assert sorted(str(p.relative_to(out)) for p in out.rglob('*')) == before
  assert (out / 'comparison.json').read_text() == '[]\n'


def test_earlier_outputs_lists_only_what_a_comparison_writes(tmp_path):
  out = tmp_path / 'demo'
  assert compare.earlier_outputs(str(out)) == []
  out.mkdir()
  (out / 'run.json').write_text('{}')
  (out / 'full_random').mkdir()
  assert compare.earlier_outputs(str(out)) == ['full_random', 'run.json']
  (out / 'linear_pretrained').write_text('a file where a row folder would be')
  with pytest.raises(ValueError, match="'linear_pretrained'"):
    compare.earlier_outputs(str(out))
