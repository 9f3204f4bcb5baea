"""Host loaders: seeded shuffling, sharding, drop-remainder, pad-and-mask, resumable position."""
import json

import numpy as np
import pytest

from dapt_jax import data
from dapt_jax.data.sources import ArraySource


def _source(n, points=4):
  # Sample i is recognisable from its points: every coordinate equals i.
  pts = np.repeat(np.arange(n, dtype=np.float32)[:, None, None], points, 1).repeat(3, 2)
  return ArraySource(pts, np.arange(n) % 7)


def _ids(batch):
  return batch['points'][:, 0, 0].astype(int).tolist()


def test_train_batches_drop_remainder_and_cover_each_sample_at_most_once():
  loader = data.TrainLoader(_source(23), global_batch_size=4, seed=0)
  assert loader.steps_per_epoch == 5
  batches = list(loader.epoch(0))
  assert len(batches) == 5
  for b in batches:
    assert b['points'].shape == (4, 4, 3) and b['points'].dtype == np.float32
    assert b['label'].dtype == np.int32
    np.testing.assert_array_equal(b['label'], np.array(_ids(b)) % 7)  # labels travel with points
  seen = sum((_ids(b) for b in batches), [])
  assert len(set(seen)) == 20 and set(seen) <= set(range(23))


def test_train_order_is_a_function_of_seed_and_epoch():
  a = data.TrainLoader(_source(40), 8, seed=1)
  b = data.TrainLoader(_source(40), 8, seed=1)
  c = data.TrainLoader(_source(40), 8, seed=2)
  e3 = [_ids(x) for x in a.epoch(3)]
  assert e3 == [_ids(x) for x in b.epoch(3)]  # no need to replay epochs 0..2
  assert e3 != [_ids(x) for x in a.epoch(4)]  # reshuffled every epoch
  assert e3 != [_ids(x) for x in c.epoch(3)]
  assert sorted(sum(e3, [])) == list(range(40))


def test_hosts_split_each_global_batch_without_overlap():
  single = [_ids(b) for b in data.TrainLoader(_source(50), 12, seed=3).epoch(2)]
  hosts = [[_ids(b) for b in data.TrainLoader(_source(50), 12, 3, p, 3).epoch(2)]
           for p in range(3)]
  for step, global_ids in enumerate(single):
    parts = [hosts[p][step] for p in range(3)]
    assert all(len(x) == 4 for x in parts)
    assert sum(parts, []) == global_ids
  with pytest.raises(ValueError, match='multiple'):
    data.TrainLoader(_source(50), 10, seed=0, process_index=0, process_count=3)


def test_resume_continues_at_the_same_batch():
  ref = data.TrainLoader(_source(30), 4, seed=7)
  full = [_ids(b) for e in range(3) for b in ref.epoch(e)]
  run = data.TrainLoader(_source(30), 4, seed=7)
  got = [_ids(b) for b in run.epoch(0)]
  it = run.epoch(1)
  for _ in range(3):
    got.append(_ids(next(it)))
  state = json.loads(json.dumps(run.get_state()))  # what a checkpoint stores
  assert (state['epoch'], state['batch']) == (1, 3)
  resumed = data.TrainLoader(_source(30), 4, seed=7)
  resumed.set_state(state)
  for e in range(state['epoch'], 3):
    got += [_ids(b) for b in resumed.epoch(e)]
  assert got == full
  assert resumed.get_state()['epoch'] == 3 and resumed.get_state()['batch'] == 0


def test_endless_iteration_and_state_validation():
  loader = data.TrainLoader(_source(10), 4, seed=0)
  it = iter(loader)
  first = [_ids(next(it)) for _ in range(5)]  # 2 steps per epoch → crosses into epoch 2
  assert first[:2] == [_ids(b) for b in data.TrainLoader(_source(10), 4, 0).epoch(0)]
  assert loader.get_state()['epoch'] == 2 and loader.get_state()['batch'] == 1
  other = data.TrainLoader(_source(11), 4, seed=0)
  with pytest.raises(ValueError, match='num_examples'):
    other.set_state(loader.get_state())
  with pytest.raises(ValueError, match='outside'):
    loader.set_state({'epoch': 0, 'batch': 2})
  with pytest.raises(ValueError, match='fill one global batch'):
    data.TrainLoader(_source(3), 4, seed=0)


@pytest.mark.parametrize('n, global_batch, hosts', [(23, 8, 1), (23, 8, 2), (5, 8, 4), (16, 8, 2)])
def test_eval_counts_every_sample_exactly_once(n, global_batch, hosts):
  counts = np.zeros(n, int)
  num_batches = None
  for p in range(hosts):
    loader = data.EvalLoader(_source(n), global_batch, process_index=p, process_count=hosts)
    num_batches = loader.num_batches
    batches = list(loader)
    assert len(batches) == num_batches == -(-n // global_batch)
    for b in batches:
      assert b['points'].shape[0] == b['label'].shape[0] == b['mask'].shape[0] == global_batch // hosts
      assert b['mask'].dtype == bool
      ids = np.array(_ids(b))
      np.testing.assert_array_equal(ids[b['mask']], b['index'][b['mask']])
      assert (b['index'][~b['mask']] == -1).all()
      np.add.at(counts, ids[b['mask']], 1)
  np.testing.assert_array_equal(counts, 1)
  assert num_batches * global_batch - n == (-n) % global_batch  # padding only in the last batch


def test_loaders_read_a_prepared_tfds_source(tmp_path):
  dc = data.default_data_config('synthetic_shapes')
  dc.tfds_data_dir = str(tmp_path)
  dc.synthetic_num_train, dc.synthetic_num_test, dc.synthetic_points = 20, 6, 32
  source, _ = data.get_source(dc, 'train')
  batch = next(data.TrainLoader(source, 8, seed=0).epoch(0))
  order = data.TrainLoader(source, 8, seed=0).order(0)[:8]
  np.testing.assert_array_equal(batch['points'], np.stack([source[i]['points'] for i in order]))
  np.testing.assert_array_equal(batch['label'], [source[i]['label'] for i in order])
  test_source, _ = data.get_source(dc, 'test')
  batches = list(data.EvalLoader(test_source, 4))
  assert [int(b['mask'].sum()) for b in batches] == [4, 2]


@pytest.mark.parametrize('hosts', [1, 2])
def test_unshuffled_batches_are_one_wrapping_stream_in_source_order(hosts):
  n, g = 10, 4  # 2 steps per epoch; 2 samples per epoch are deferred, not lost
  loaders = [data.TrainLoader(_source(n), g, seed=0, process_index=p, process_count=hosts,
                              shuffle=False) for p in range(hosts)]
  assert loaders[0].steps_per_epoch == n // g
  for e in range(4):
    per_host = [[_ids(b) for b in loader.epoch(e)] for loader in loaders]
    for j in range(loaders[0].steps_per_epoch):
      want = ((e * loaders[0].steps_per_epoch + j) * g + np.arange(g)) % n
      assert sum((per_host[p][j] for p in range(hosts)), []) == want.tolist()
      for p in range(hosts):  # host p reads the p-th contiguous part
        assert per_host[p][j] == want[p * g // hosts:(p + 1) * g // hosts].tolist()
  # Concretely, host-count independent: epoch 0 = 0..7, epoch 1 = 8, 9, 0..5, epoch 2 = 6..9, 0..3.
  assert sum((_ids(b) for b in data.TrainLoader(_source(n), g, 0, shuffle=False).epoch(1)),
             []) == [8, 9, 0, 1, 2, 3, 4, 5]
  # The seed does not matter without shuffling.
  assert ([_ids(b) for b in data.TrainLoader(_source(n), g, 5, shuffle=False).epoch(3)] ==
          [_ids(b) for b in data.TrainLoader(_source(n), g, 6, shuffle=False).epoch(3)])


def test_unshuffled_resume_continues_the_stream_and_refuses_a_shuffled_state():
  full = [_ids(b) for e in range(3) for b in data.TrainLoader(_source(11), 4, 0,
                                                               shuffle=False).epoch(e)]
  run = data.TrainLoader(_source(11), 4, seed=0, shuffle=False)
  it = iter(run)
  got = [_ids(next(it)) for _ in range(3)]  # into epoch 1
  state = json.loads(json.dumps(run.get_state()))
  assert (state['epoch'], state['batch']) == (1, 1)
  resumed = data.TrainLoader(_source(11), 4, seed=0, shuffle=False)
  resumed.set_state(state)
  for e in range(1, 3):
    got += [_ids(b) for b in resumed.epoch(e)]
  assert got == full
  with pytest.raises(ValueError, match='shuffle'):
    data.TrainLoader(_source(11), 4, seed=0).set_state(state)


def test_loader_benchmark_reports_one_and_two_processes(tmp_path):
  from dapt_jax.bench import loader as loader_bench
  out = tmp_path / 'bench'
  loader_bench.main(['--out', str(out), '--clouds', '64', '--points', '32', '--batch', '16',
                     '--epochs', '2'])
  report = json.loads((out / 'loader.json').read_text())
  rows = {r['setting']: r for r in report['results']}
  assert rows['one process']['processes'] == 1 and rows['two processes']['processes'] == 2
  for row in rows.values():  # every process read its share of 2 epochs of 4 batches of 16
    assert row['clouds'] == 2 * 64 and row['clouds_per_s'] > 0
  assert '| two processes | 2 |' in (out / 'loader.md').read_text()
