"""The demo comparison's rows: configs, equivalent commands and argument errors (no training)."""

import pytest

from dapt_jax import partition
from dapt_jax.demo import compare


@pytest.mark.parametrize('pose', ['so3', 'upright'])
def test_rows_share_the_recipe_and_differ_in_partition_and_start(pose):
  configs = {name: compare.row_config(name, '/bb', 4, seed=3, pose=pose) for name in compare.ROWS}
  for name, c in configs.items():
    assert (c.seed, c.num_epochs, c.optim.warmup_epochs, c.data.synthetic_pose) == (3, 4, 0, pose)
    assert c.init_from == ('/bb' if name.endswith('_pretrained') else None)
  assert configs['dapt_pretrained'].partition_rules == tuple(partition.DAPT_RULES)
  assert configs['dapt_random'].partition_rules == tuple(partition.DAPT_RULES)
  assert configs['linear_pretrained'].partition_rules == tuple(partition.LINEAR_PROBE_RULES)
  assert configs['full_pretrained'].partition_rules == tuple(partition.FULL_FINETUNE_RULES)


def test_command_lines_name_the_pose_only_when_it_is_not_the_default():
  plain = compare.command_line('dapt_pretrained', '/bb', 6, 'runs/demo/dapt_pretrained')
  assert plain.startswith('python main.py --config=configs/synthetic.py')
  assert '--config.init_from=/bb' in plain and 'synthetic_pose' not in plain
  upright = compare.command_line('dapt_random', '/bb', 6, 'w', pose='upright')
  assert '--config.data.synthetic_pose=upright' in upright and 'init_from' not in upright
  assert compare.command_line('full_pretrained', '/bb', 6, 'w', pose='upright').endswith(
      '--rows full_pretrained --epochs 6 --pose upright')


def test_argument_mistakes_exit_2_with_one_line(tmp_path, capsys):
  out = tmp_path / 'out'
  assert compare.main(['--rows', 'dapt_random,bogus', '--out', str(out)]) == 2
  assert capsys.readouterr().err.strip() == ('error: --rows: unknown bogus; choose from '
                                            + ', '.join(compare.ROWS))
  assert compare.main(['--epochs', '0', '--out', str(out)]) == 2
  assert compare.main(['--backbone', str(tmp_path / 'none'), '--out', str(out)]) == 2
  assert 'no such backbone directory' in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    compare.main(['--pose', 'sideways', '--out', str(out)])
  assert e.value.code == 2
  assert not out.exists()
