"""metrics.jsonl keeps one row per step and split after any number of resumes; TensorBoard
events are written without importing torch."""
import os
import subprocess
import sys

import pytest

from dapt_jax import reporting


def _rows(workdir):
  return [(r['split'], r['step']) for r in reporting.read_metrics(workdir)]


def test_resumed_writer_drops_the_rows_it_will_redo(tmp_path):
  w = str(tmp_path)
  writer = reporting.MetricWriter(w)
  for step in range(1, 7):
    writer.write('train', step, step // 4, {'loss': 1.0 / step})
  writer.write('eval', 4, 1, {'accuracy': 0.5})
  writer.close()
  with open(os.path.join(w, reporting.METRICS_FILE), 'a') as f:
    f.write('{"split": "train", "st')  # a line cut short by kill -9
  # The checkpoint the run resumes from is step 4: steps 5, 6 (and the cut line) are redone.
  writer = reporting.MetricWriter(w, resume_step=4)
  assert _rows(w) == [('train', 1), ('train', 2), ('train', 3), ('train', 4), ('eval', 4)]
  for step in (5, 6):
    writer.write('train', step, 1, {'loss': 0.1})
  writer.close()
  rows = _rows(w)
  assert len(rows) == len(set(rows)) == 7


def test_drop_rows_after_leaves_a_clean_file_alone(tmp_path):
  w = str(tmp_path)
  assert reporting.drop_rows_after(w, 3) == 0  # no file yet
  writer = reporting.MetricWriter(w)
  writer.write('train', 1, 0, {'loss': 1.0})
  writer.close()
  mtime = os.stat(os.path.join(w, reporting.METRICS_FILE)).st_mtime_ns
  assert reporting.drop_rows_after(w, 1) == 0
  assert os.stat(os.path.join(w, reporting.METRICS_FILE)).st_mtime_ns == mtime
  assert reporting.drop_rows_after(w, 0) == 1 and _rows(w) == []


def test_tensorboard_events_are_written_without_importing_torch(tmp_path):
  """tensorboardX imports torch when it is installed (1–2 s at the start of every run); the
  writer imports it without, and torch still imports afterwards. In a fresh process: the test
  process may already have torch."""
  pytest.importorskip('torch')
  pytest.importorskip('tensorboardX')
  code = ('import sys; from dapt_jax import reporting\n'
          f'w = reporting.MetricWriter({str(tmp_path)!r}); w.write("train", 1, 0, {{"loss": 0.5}})\n'
          'w.close(); print("torch" in sys.modules)\n'
          'import torch; print(torch.ones(1).item())\n')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run([sys.executable, '-c', code], cwd=root, capture_output=True, text=True,
                     env=dict(os.environ, JAX_PLATFORMS='cpu'), timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.split() == ['False', '1.0']
  events = os.listdir(tmp_path / 'tensorboard')
  assert len(events) == 1 and events[0].startswith('events.out.tfevents.')
  assert os.path.getsize(tmp_path / 'tensorboard' / events[0]) > 0
