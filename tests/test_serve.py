"""`dapt_jax.load` (dapt_jax.serve): a tiny trained run used from Python gives --mode=predict's
probabilities on the same files, any batch size or list of sizes, prepared clouds passed
through unchanged, the head's input from `embed`, a converted checkpoint with its config, every
mistake as one ServeError line, and the README's five-line example runs as written."""
import os
import re
import shutil

import flax
import jax
import numpy as np
import pytest

import dapt_jax
from dapt_jax import errors
from dapt_jax import predict
from dapt_jax import predict_io
from dapt_jax import pretrained
from dapt_jax import serve
from dapt_jax.data import clouds
from dapt_jax.models import classifier
from tests.test_predict import run  # noqa: F401,F811  (the tiny trained run, made once per test run)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ['box', 'cone', 'cylinder']


@pytest.fixture(scope='module')
def predictor(run):
  return dapt_jax.load(run[1])


def _test_files(root):
  return predict_io.find_inputs(str(root / 'test'))


def test_load_gives_mode_predicts_probabilities_on_the_same_files(run, predictor, tmp_path):
  root, workdir, config = run
  assert predictor.class_names == NAMES and predictor.kind == 'classes'
  assert predictor.input_points == 96 and 'best checkpoint' in predictor.origin
  files = _test_files(root)
  out = tmp_path / 'out'
  shutil.copytree(workdir, out)
  cli = predict.predict(config, str(out), str(root / 'test'))
  assert cli.files == files
  # The files as arrays in memory (meshes sampled as --mode=predict samples them, seed 0).
  raw = [clouds.read_cloud(f, mesh_points=int(config.data.folder_mesh_points), seed=0)
         for f in files]
  probs = predictor.predict(raw)
  assert probs.shape == (len(files), 3) and probs.dtype == np.float64
  np.testing.assert_allclose(probs.sum(1), 1, atol=1e-12)
  # --mode=predict runs batches of eval.batch_size (8, the last padded), the list one batch of
  # 12: other XLA programs on the same numbers, so float32 rounding apart (~1e-7); 1e-5 on
  # probabilities is a wide margin that still catches any difference in preparation.
  np.testing.assert_allclose(probs, cli.probs, atol=1e-5, rtol=0)


def test_a_prepared_cloud_passes_through_unchanged(run, predictor):
  root, _, config = run
  raw = [clouds.read_cloud(f, mesh_points=int(config.data.folder_mesh_points), seed=0)
         for f in _test_files(root)[:5]]
  prepared = predictor.prepare(raw)
  assert prepared.shape == (5, 96, 3) and prepared.dtype == np.float32
  assert np.array_equal(predictor.prepare(prepared), prepared)  # bit for bit
  assert np.array_equal(predictor.logits(prepared), predictor.logits(raw))
  np.testing.assert_allclose(np.linalg.norm(prepared, axis=-1).max(1), 1, atol=1e-6)  # unit sphere


def test_any_batch_size_a_list_of_sizes_and_one_cloud(predictor):
  rng = np.random.default_rng(0)
  sizes = (40, 96, 300)  # resampled, as many as stored, sampled down by FPS
  cloud_list = [rng.normal(size=(n, 3)).astype(np.float32) for n in sizes]
  together = predictor.predict(cloud_list)
  assert together.shape == (3, 3)
  for i, c in enumerate(cloud_list):  # batch 1 and batch 3 are separate compiled programs
    np.testing.assert_allclose(predictor.predict(c)[0], together[i], atol=1e-5, rtol=0)
  batch = rng.normal(size=(3, 96, 3))  # float64 and a batch array are fine
  np.testing.assert_allclose(predictor.predict(batch), predictor.predict(list(batch)), atol=0,
                             rtol=0)  # the same compiled program on the same prepared clouds


def test_embed_is_what_the_head_sees(predictor):
  """The head applied to `embed`'s features gives `logits`: they are exactly its input."""
  clouds_in = np.random.default_rng(1).normal(size=(4, 150, 3))
  features = predictor.embed(clouds_in)
  assert features.ndim == 2 and features.shape[0] == 4 and features.dtype == np.float32
  v = predictor.variables
  head = classifier.ClassifierHead(num_classes=3)
  logits = head.apply({'params': v['params']['head'], 'batch_stats': v['batch_stats']['head']},
                      features, train=False)
  np.testing.assert_allclose(np.asarray(logits), predictor.logits(clouds_in), atol=1e-5, rtol=0)


def test_a_converted_checkpoint_with_its_config(run, predictor, tmp_path):
  _, workdir, config = run
  ckpt = tmp_path / 'ckpt'
  variables = jax.tree.map(np.asarray, flax.core.unfreeze(predictor.variables))
  pretrained.save_converted(str(ckpt), variables, {})
  loaded = dapt_jax.load(ckpt, config=os.path.join(workdir, 'config.json'))
  assert loaded.class_names == NAMES and loaded.origin == str(ckpt)
  x = np.random.default_rng(2).normal(size=(3, 120, 3))
  np.testing.assert_array_equal(loaded.logits(x), predictor.logits(x))  # the same weights
  loaded = dapt_jax.load(str(ckpt), config=config)  # a ConfigDict works as well
  np.testing.assert_array_equal(loaded.logits(x), predictor.logits(x))


def test_every_mistake_is_one_serve_error_line(run, predictor, tmp_path):
  _, workdir, _ = run
  (tmp_path / 'file.txt').write_text('x')
  os.makedirs(tmp_path / 'empty')
  (tmp_path / 'bad.py').write_text('def get_config():\n  return 1 / 0\n')
  cases = [
      (lambda: dapt_jax.load(tmp_path / 'missing'), 'no such training workdir'),
      (lambda: dapt_jax.load(tmp_path / 'file.txt'), 'not a folder'),
      (lambda: dapt_jax.load(tmp_path / 'empty'), 'no config.json, so not a training workdir'),
      (lambda: dapt_jax.load(tmp_path / 'empty', config='nope.py:x'), 'no such file nope.py'),
      (lambda: dapt_jax.load(tmp_path / 'empty', config=str(tmp_path / 'bad.py')),
       'ZeroDivisionError'),
      (lambda: dapt_jax.load(tmp_path / 'empty', config=os.path.join(workdir, 'config.json')),
       'not a converted checkpoint'),  # the library's own error, re-typed
      (lambda: predictor.predict(np.zeros((10, 2))), 'shape (10, 2), expected [N, 3]'),
      (lambda: predictor.predict(np.zeros((2, 3, 10, 3))), 'expected [N, 3], [B, N, 3]'),
      (lambda: predictor.predict(np.array([['a', 'b', 'c']] * 20)), 'dtype <U1'),
      (lambda: predictor.predict(np.zeros((0, 3))), 'an empty cloud (0 points)'),
      (lambda: predictor.predict(np.zeros((0, 50, 3))), 'a batch of no clouds'),
      (lambda: predictor.predict([]), 'an empty list'),
      (lambda: predictor.predict([np.zeros((50, 3)), np.zeros((5, 3))]),
       'points[1]: 5 point(s), fewer than one patch of 8'),
      (lambda: predictor.predict([np.zeros(3)]), 'points[0]: shape (3,), expected a cloud'),
      (lambda: predictor.predict(np.where(np.eye(30, 3) > 0, np.nan, 0.0)),
       '3 of 30 points have NaN/inf coordinates, first point 0'),
      (lambda: predictor.segment(np.zeros((50, 3)), 'box'), 'has predict() and embed(), not'),
  ]
  for fn, problem in cases:
    with pytest.raises(serve.ServeError) as e:
      fn()
    msg = str(e.value)
    assert '\n' not in msg and problem in msg, (problem, msg)
    assert isinstance(e.value, errors.UserError)


def _readme_example() -> str:
  """The Python block under README.md's 'Use a fine-tuned model from Python' heading."""
  text = open(os.path.join(ROOT, 'README.md'), encoding='utf-8').read()
  section = text[text.index('## Use a fine-tuned model from Python'):]
  return re.search(r'```python\n(.*?)```', section, re.S).group(1)


def test_the_readme_example_runs_as_written(run, monkeypatch, tmp_path, capsys):
  root, workdir, _ = run
  code = _readme_example()
  assert len(code.strip().splitlines()) == 5, code
  os.makedirs(tmp_path / 'runs')
  os.symlink(workdir, tmp_path / 'runs' / 'mine')
  files = _test_files(root)
  for name, f in zip(('scan1.npy', 'scan2.npy'), (files[0], files[-1])):
    np.save(tmp_path / name, clouds.read_cloud(f, mesh_points=256, seed=0))
  monkeypatch.chdir(tmp_path)
  exec(compile(code, 'README.md', 'exec'), {})  # pylint: disable=exec-used
  printed = capsys.readouterr().out.strip()
  assert re.fullmatch(r"\['(box|cone|cylinder)', '(box|cone|cylinder)'\]", printed), printed
