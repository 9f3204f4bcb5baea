"""The classifier as an ONNX model (`python -m dapt_jax.export ... --format=onnx`).

The same function as the StableHLO artifact (`export.artifact_function`: prepared clouds
[B, input_points, 3] → logits [B, C], weights embedded, FPS inside) converted by `jax2onnx`, then
checked with `onnxruntime` against JAX's logits before anything is written. Needs the optional
packages of requirements-onnx.txt (`pip install --no-deps -r requirements-onnx.txt`).

One workaround, for the farthest point sampling loop: while it traces, jax2onnx replaces
`jax.lax.fori_loop` by a primitive of its own whose lowering embeds the loop body's closed-over
arrays as constants (`np.asarray` of each), and the FPS body closes over the traced clouds, so
that fails (TracerArrayConversionError in jax2onnx/plugins/jax/lax/fori_loop.py, 0.17.1).
JAX's own `fori_loop` traces to a `scan` whose closed-over arrays are operands, and jax2onnx
converts that (to an ONNX Loop), so the conversion runs the model with JAX's `fori_loop` put back.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
from typing import Any, Iterator

import jax
import numpy as np

from dapt_jax import errors

MODEL_FILE = 'model.onnx'
INPUT_NAME = 'points'
OUTPUT_NAME = 'logits'
OPSET = 23  # jax2onnx 0.17's default; onnxruntime >= 1.23 runs it
PACKAGES = ('jax2onnx', 'onnx', 'onnxruntime')
CHECK_CLOUDS = 4  # random clouds the export checks with onnxruntime before writing
ULPS_PER_LAYER = 8

# JAX's own fori_loop, taken when this module is imported (jax2onnx patches the attribute only
# while it converts, so here it is still JAX's).
_JAX_FORI_LOOP = jax.lax.fori_loop

README = '''# A dapt-jax classifier, exported to ONNX

`model.onnx` (opset {opset}) has its weights inside: it needs only `onnxruntime` and `numpy`
(no dapt-jax, no JAX). Input `{input_name}`: float32 `[B, {input_points}, 3]`, clouds prepared as
`model.json` says ({preparation}); any batch size B. Output `{output_name}`: logits
`[B, {num_classes}]`, in the order of `model.json`'s `class_names`.

```python
import json
import numpy as np
import onnxruntime as ort

ort.set_default_logger_severity(3)  # quiet: the graph has constants it does not use
session = ort.InferenceSession('model.onnx', providers=['CPUExecutionProvider'])
meta = json.load(open('model.json'))
points = np.load('clouds.npy').astype(np.float32)  # [B, input_points, 3], prepared
logits = session.run(None, {{'points': points}})[0]  # [B, C]
print([meta['class_names'][i] for i in logits.argmax(1)])
```

To prepare raw clouds of any size the same way, with dapt-jax installed:
`dapt_jax.load(RUN).prepare(clouds)`.
'''


class OnnxError(errors.UserError):
  """ONNX export is not possible here (a package missing); one line."""


def check_installed() -> None:
  """Refuses, before anything is loaded, when an optional ONNX package is missing."""
  missing = [p for p in PACKAGES if importlib.util.find_spec(p) is None]
  if missing:
    raise OnnxError(f'--format=onnx needs {", ".join(missing)} (not installed): '
                    'pip install --no-deps -r requirements-onnx.txt')


def tolerance(logits: np.ndarray, depth: int) -> float:
  """The largest |ONNX − JAX| difference of float32 logits [B, C] that is rounding alone.

  onnxruntime and XLA run the same float32 operations with other kernels: other summation orders
  in the matmuls, other exp/erf/rsqrt approximations. Each layer (the tokenizer's PointNet, every
  transformer block, the head: depth + 2) adds a few float32 ulps of relative difference; layer
  norms keep it from compounding, so the differences add: ULPS_PER_LAYER ulps per layer of the
  logits' scale. A real difference (other FPS centres, another weight) is orders of magnitude
  larger. FPS and kNN compare distances computed the same way on both sides, so they choose the
  same points unless two distances tie within an ulp (random clouds: practically never).
  """
  scale = max(float(np.abs(logits).max()), float(np.finfo(np.float32).tiny))
  return ULPS_PER_LAYER * (depth + 2) * float(np.finfo(np.float32).eps) * scale


@contextlib.contextmanager
def _jax_fori_loop() -> Iterator[None]:
  """jax.lax.fori_loop is JAX's inside (see the module docstring), jax2onnx's again after."""
  if _JAX_FORI_LOOP.__module__.startswith('jax2onnx'):
    raise RuntimeError('dapt_jax.onnx_export was imported during a jax2onnx conversion')
  patched = jax.lax.fori_loop
  jax.lax.fori_loop = _JAX_FORI_LOOP
  try:
    yield
  finally:
    jax.lax.fori_loop = patched


def convert(function: Any, input_points: int) -> bytes:
  """points [B, input_points, 3] → logits function as a serialised ONNX model, batch symbolic."""
  from jax2onnx import to_onnx  # pylint: disable=g-import-not-at-top

  def traced(points):
    with _jax_fori_loop():
      return function(points)
  # Harmless warnings, dozens of lines: onnx_ir's, once per shape constant it leaves untyped;
  # jax2onnx's, a traceback for each of its example plugins whose library (equinox, dm-pix: left
  # out by requirements-onnx.txt) is not installed.
  quiet = [logging.getLogger(name) for name in ('onnx_ir', 'jax2onnx')]
  levels = [q.level for q in quiet]
  for q in quiet:
    q.setLevel(logging.ERROR)
  try:
    model = to_onnx(traced, [('B', input_points, 3)], model_name='dapt_jax_classifier',
                    opset=OPSET, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
  finally:
    for q, level in zip(quiet, levels):
      q.setLevel(level)
  return model.SerializeToString()


def session(model: bytes) -> Any:
  """An onnxruntime CPU session of a serialised model (warnings off: jax2onnx leaves constants
  in the FPS loop's body that onnxruntime drops, one warning each)."""
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  options = ort.SessionOptions()
  options.log_severity_level = 3
  return ort.InferenceSession(model, options, providers=['CPUExecutionProvider'])


def run(sess: Any, prepared: np.ndarray) -> np.ndarray:
  """prepared float32 [B, input_points, 3] → logits [B, C] from an onnxruntime session."""
  return sess.run(None, {INPUT_NAME: np.asarray(prepared, np.float32)})[0]


def check(model: bytes, predictor: Any) -> dict:
  """onnxruntime's logits against the predictor's (JAX) on CHECK_CLOUDS random prepared clouds;
  a difference beyond `tolerance` is refused (nothing is written)."""
  rng = np.random.default_rng(0)
  prepared = predictor.prepare(rng.normal(size=(CHECK_CLOUDS, predictor.input_points, 3)))
  got = run(session(model), prepared)
  want = predictor.prepared_logits(prepared)
  limit = tolerance(want, int(predictor.config.model.depth))
  diff = float(np.abs(got - want).max()) if got.shape == want.shape else float('inf')
  if not diff <= limit:
    raise OnnxError(f'the ONNX model disagrees with JAX on {CHECK_CLOUDS} random clouds (largest '
                    f'logit difference {diff:.3g} > {limit:.3g}; shapes {got.shape} and '
                    f'{want.shape}): not written; a converter problem, please report it')
  return {'clouds': CHECK_CLOUDS, 'max_abs_logit_difference': diff, 'tolerance': limit}


def versions() -> dict:
  import importlib.metadata as md  # pylint: disable=g-import-not-at-top
  return {p: md.version(p) for p in PACKAGES}
