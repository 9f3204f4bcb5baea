"""python -m dapt_jax.export: one export of a tiny trained run, run by its own README's code in a
process that cannot import the project, gives the predictor's logits at batch sizes 1 and 7;
model.json says what the input is; a non-empty OUT_DIR and bad arguments are one line. The same
for --format=onnx through onnxruntime (skipped where requirements-onnx.txt is not installed)."""
import importlib.util
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

import dapt_jax
from dapt_jax import errors
from dapt_jax import export
from dapt_jax import onnx_export
from tests.test_predict import run  # noqa: F401,F811  (the tiny trained run, made once per test run)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def exported(run, tmp_path_factory):
  """(workdir, OUT_DIR, predictor): the tiny trained run, exported once."""
  workdir = run[1]
  out = str(tmp_path_factory.mktemp('export') / 'exported')
  assert errors.run_cli(export.main, [workdir, out], exit=False) == 0
  return workdir, out, dapt_jax.load(workdir)


def test_the_files_and_what_model_json_says(exported):
  workdir, out, predictor = exported
  assert sorted(os.listdir(out)) == ['README.md', 'model.json', 'model.stablehlo']
  meta = json.load(open(os.path.join(out, 'model.json')))
  assert meta['input_points'] == 96 and meta['input'] == {'shape': ['B', 96, 3],
                                                          'dtype': 'float32'}
  assert meta['normalization'] == 'unit_sphere' and meta['class_names'] == predictor.class_names
  assert meta['platforms'] == ['cpu'] and meta['config']['model']['trans_dim'] == 32
  assert meta['commit'] == 'unknown' or re.fullmatch(r'[0-9a-f]{40}(-dirty)?', meta['commit'])
  assert 'best checkpoint' in meta['weights']


def _readme_code(out):
  text = open(os.path.join(out, 'README.md'), encoding='utf-8').read()
  return re.search(r'```python\n(.*?)```', text, re.S).group(1)


def _run_readme_elsewhere(out, model_file, clouds_by_batch, work):
  """The README's own lines, as written, in `python -I` (no PYTHONPATH, no user site, the
  script's folder not on sys.path) with another working directory, where dapt_jax cannot be
  imported: once per batch of `clouds_by_batch` ({B: [B, input_points, 3]}) → {B: logits}."""
  os.makedirs(work)
  for name in (model_file, 'model.json'):
    os.symlink(os.path.join(out, name), work / name)
  script = ['import numpy as np', 'code = open("readme_code.py").read()']
  for b in clouds_by_batch:
    np.save(work / f'batch_{b}.npy', clouds_by_batch[b])
    script += [f'np.save("clouds.npy", np.load("batch_{b}.npy"))', 'scope = {}',
               'exec(code, scope)', f'np.save("logits_{b}.npy", scope["logits"])']
  script += ['import importlib.util',
             'assert importlib.util.find_spec("dapt_jax") is None, "the project is importable"']
  (work / 'readme_code.py').write_text(_readme_code(out))
  (work / 'check.py').write_text('\n'.join(script) + '\n')
  env = {k: v for k, v in os.environ.items() if k in ('PATH', 'HOME', 'LANG')}
  env['JAX_PLATFORMS'] = 'cpu'
  done = subprocess.run([sys.executable, '-I', 'check.py'], cwd=work, env=env, timeout=180,
                        capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  printed = done.stdout.strip().splitlines()
  assert len(printed) == len(clouds_by_batch) and all(
      re.fullmatch(r"\[('(box|cone|cylinder)'(, )?)+\]", p) for p in printed), printed
  return {b: np.load(work / f'logits_{b}.npy') for b in clouds_by_batch}


def _batches(predictor):
  """{1: [1, 96, 3], 7: [7, 96, 3]} prepared clouds from random clouds of several sizes."""
  rng = np.random.default_rng(0)
  raw = [rng.normal(size=(int(rng.integers(60, 300)), 3)) for _ in range(7)]
  prepared = predictor.prepare(raw)
  return {1: prepared[:1], 7: prepared}


def test_the_artifact_gives_the_predictors_logits_without_the_project(exported, tmp_path):
  """The README's lines in a process that cannot import the project; the same clouds go through
  `predictor.prepared_logits` at the same batch size.

  Tolerance: the same float32 network on the same CPU; the predictor's program takes the weights
  as arguments, the artifact's holds them as constants, so XLA may fuse or fold differently and
  round differently: a few float32 ulps of the logits' scale. We allow 8 ulps of the largest
  |logit| (about 1e-6 here); any real difference (another FPS, preparation or weight) is orders
  of magnitude larger."""
  _, out, predictor = exported
  batches = _batches(predictor)
  logits = _run_readme_elsewhere(out, 'model.stablehlo', batches, tmp_path / 'elsewhere')
  for b, clouds_b in batches.items():
    got = logits[b]
    want = predictor.prepared_logits(clouds_b)
    assert got.shape == want.shape == (b, 3) and got.dtype == np.float32
    atol = 8 * np.finfo(np.float32).eps * float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)


def test_a_non_empty_out_dir_is_refused_unless_force(exported, tmp_path, capsys):
  workdir, out, _ = exported
  before = {n: os.path.getmtime(os.path.join(out, n)) for n in os.listdir(out)}
  assert errors.run_cli(export.main, [workdir, out], exit=False) == 2
  err = capsys.readouterr().err.strip()
  assert err == f'error: {out}: exists and is not empty (pass --force to write into it)'
  assert {n: os.path.getmtime(os.path.join(out, n)) for n in os.listdir(out)} == before
  for argv, problem in (
      ([workdir, str(tmp_path / 'o'), '--platforms=cpu,gpu'], "'gpu' is not one of"),
      ([workdir], 'the following arguments are required: out_dir'),
      ([str(tmp_path / 'nope'), str(tmp_path / 'o')], 'no such training workdir'),
      ([workdir, str(tmp_path / 'no' / 'such' / 'o')], 'no such folder')):
    assert errors.run_cli(export.main, argv, exit=False) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and '\n' not in err and problem in err, (argv, err)
  assert not os.path.exists(tmp_path / 'o')


def test_force_rewrites_and_accelerators_are_lowered_too(exported, tmp_path):
  """--force writes into a non-empty folder (keeping what else is there); --platforms=cpu,cuda
  gives one program for both, which still runs here on the CPU."""
  workdir, out, predictor = exported
  target = tmp_path / 'again'
  os.makedirs(target)
  (target / 'notes.txt').write_text('mine')
  argv = [workdir, str(target), '--force', '--platforms=cpu,cuda']
  assert errors.run_cli(export.main, argv, exit=False) == 0
  assert sorted(os.listdir(target)) == ['README.md', 'model.json', 'model.stablehlo', 'notes.txt']
  from jax import export as jax_export  # pylint: disable=g-import-not-at-top
  model = jax_export.deserialize(bytearray((target / 'model.stablehlo').read_bytes()))
  assert model.platforms == ('cpu', 'cuda')
  assert json.load(open(target / 'model.json'))['platforms'] == ['cpu', 'cuda']
  x = predictor.prepare(np.random.default_rng(1).normal(size=(2, 100, 3)))
  np.testing.assert_allclose(np.asarray(model.call(x)), predictor.prepared_logits(x), rtol=0,
                             atol=1e-5)


# ONNX (--format=onnx): optional packages, requirements-onnx.txt.


@pytest.fixture(scope='module')
def onnx_exported(run, tmp_path_factory):
  for package in onnx_export.PACKAGES:
    pytest.importorskip(package, reason=f'--format=onnx needs {package}: pip install --no-deps '
                        '-r requirements-onnx.txt')
  workdir = run[1]
  out = str(tmp_path_factory.mktemp('onnx') / 'exported')
  assert errors.run_cli(export.main, [workdir, out, '--format=onnx'], exit=False) == 0
  return workdir, out, dapt_jax.load(workdir)


def test_onnx_gives_the_predictors_logits_through_onnxruntime(onnx_exported, tmp_path):
  """The ONNX README's lines (onnxruntime and numpy only) in a process that cannot import the
  project, at batch sizes 1 and 7 from one export (the batch dimension is symbolic), against
  JAX's logits of the same prepared clouds, FPS and kNN included. Tolerance
  (`onnx_export.tolerance`): other kernels for the same float32 operations, 8 ulps of the
  logits' scale per layer (depth + 2 layers: 32 ulps here); another FPS centre or weight would
  be orders of magnitude more."""
  workdir, out, predictor = onnx_exported
  assert sorted(os.listdir(out)) == ['README.md', 'model.json', 'model.onnx']
  meta = json.load(open(os.path.join(out, 'model.json')))
  assert meta['input_name'] == 'points' and meta['input'] == {'shape': ['B', 96, 3],
                                                              'dtype': 'float32'}
  assert meta['class_names'] == predictor.class_names and meta['opset'] == onnx_export.OPSET
  check = meta['onnxruntime_check']
  assert check['clouds'] == 4 and check['max_abs_logit_difference'] <= check['tolerance']
  batches = _batches(predictor)
  logits = _run_readme_elsewhere(out, 'model.onnx', batches, tmp_path / 'elsewhere')
  depth = int(predictor.config.model.depth)
  for b, clouds_b in batches.items():
    got, want = logits[b], predictor.prepared_logits(clouds_b)
    assert got.shape == want.shape == (b, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=onnx_export.tolerance(want, depth))
  # The check the export runs refuses a model that is not the predictor's network.
  other = dapt_jax.load(workdir)
  other.variables = jax.tree.map(lambda x: x * 1.01, other.variables)
  with open(os.path.join(out, 'model.onnx'), 'rb') as f:
    model = f.read()
  with pytest.raises(onnx_export.OnnxError, match='disagrees with JAX'):
    onnx_export.check(model, other)


def test_onnx_refusals_are_one_line_and_write_nothing(run, tmp_path, capsys, monkeypatch):
  workdir = run[1]
  target = str(tmp_path / 'o')
  argv = [workdir, target, '--format=onnx', '--platforms=cuda']
  assert errors.run_cli(export.main, argv, exit=False) == 2
  assert capsys.readouterr().err.strip() == (
      'error: --platforms=cuda: for --format=stablehlo only (an ONNX model runs wherever '
      'onnxruntime does)')
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'jax2onnx' else real(name, *a))
  assert errors.run_cli(export.main, [workdir, target, '--format=onnx'], exit=False) == 2
  assert capsys.readouterr().err.strip() == (
      'error: --format=onnx needs jax2onnx (not installed): pip install --no-deps -r '
      'requirements-onnx.txt')
  assert not os.path.exists(target)


def test_making_the_artifact_function_leaves_the_predictor_as_it_is(exported):
  """The artifact uses the portable XLA FPS; the predictor it is made from keeps its own (a
  benchmark times the predictor after exporting it)."""
  predictor = exported[2]
  before = predictor.task.views
  export.artifact_function(predictor)
  assert predictor.task.views is before
