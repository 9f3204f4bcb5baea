"""The demo's comparison rows (configs, equivalent commands, argument errors) and its frozen-feature
probe (the classifier it fits, a run on the shipped backbone, argument errors). Nothing trains."""

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
