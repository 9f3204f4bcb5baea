"""metrics.jsonl keeps one row per step and split after any number of resumes."""
import os

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
