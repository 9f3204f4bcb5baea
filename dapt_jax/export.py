r"""python -m dapt_jax.export WORKDIR OUT_DIR [--config=FILE.py:VARIANT] [--platforms=cpu,cuda,tpu]
[--format=stablehlo|onnx] [--force]

A fine-tuned classifier as a file that runs without this project: only `jax` and `numpy`.

    python -m dapt_jax.export runs/mine exported/
    python -m dapt_jax.export ckpt/ exported/ --config=configs/scanobjectnn.py:hardest

Writes into OUT_DIR:
  model.stablehlo  `jax.export` serialised: the network with its weights embedded, batch dimension
                   symbolic. Input float32 [B, input_points, 3], clouds as the prepared dataset
                   stores them (normalised as the data pipeline normalises); it does everything
                   the evaluation step does after that (FPS to data.num_points, voting if the run
                   votes); output logits float32 [B, C].
  model.json       input_points, the preparation (normalisation, up axis), class_names, the
                   platforms, the project's commit and the run's config.
  README.md        the ten lines that load and run it with jax and numpy.

--format=onnx writes model.onnx instead of model.stablehlo: the same function converted by
jax2onnx (optional: pip install --no-deps -r requirements-onnx.txt), checked with onnxruntime
against JAX's logits before it is written; its README runs it with onnxruntime and numpy.

WORKDIR is a training workdir (its config, classes and best checkpoint, else its last) or, with
--config, a converted checkpoint: what `dapt_jax.load` reads. `dapt_jax.load(WORKDIR).prepare`
(or --mode=predict's preparation) turns raw clouds into the input; a prepared cloud gives the
predictor's logits. --platforms lowers for accelerators as well (default: cpu); a program
exported for several runs on any of them (StableHLO only). An existing non-empty OUT_DIR is
refused unless --force, and the three files appear only once all three are written.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Optional, Sequence

from dapt_jax import errors

MODEL_FILE = 'model.stablehlo'
META_FILE = 'model.json'
README_FILE = 'README.md'
PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')  # what jax.export lowers for
FORMATS = ('stablehlo', 'onnx')

# OUT_DIR/README.md; the code block is what a user copies (and a test runs as written).
README = '''# A dapt-jax classifier, exported

`model.stablehlo` is a `jax.export` program with its weights inside: it needs only `jax` and
`numpy` (no dapt-jax). Input: float32 `[B, {input_points}, 3]`, clouds prepared as `model.json`
says ({preparation}); any batch size B. Output: logits `[B, {num_classes}]`, in the order of
`model.json`'s `class_names`. Exported for: {platforms}.

```python
import json
import numpy as np
from jax import export

with open('model.stablehlo', 'rb') as f:
  model = export.deserialize(bytearray(f.read()))
meta = json.load(open('model.json'))
points = np.load('clouds.npy').astype(np.float32)  # [B, input_points, 3], prepared
logits = np.asarray(model.call(points))             # [B, C]
print([meta['class_names'][i] for i in logits.argmax(1)])
```

To prepare raw clouds of any size the same way, with dapt-jax installed:
`dapt_jax.load(RUN).prepare(clouds)`.
'''


class ExportError(errors.UserError):
  """A bad argument or an OUT_DIR that cannot be written; one line."""


class _Parser(argparse.ArgumentParser):

  def error(self, message):  # one `error:` line, not argparse's usage block
    raise ExportError(f'{message} (see python -m dapt_jax.export --help)')


def parse_platforms(text: str) -> tuple:
  given = tuple(p.strip() for p in text.split(','))
  bad = [p for p in given if p not in PLATFORMS]
  if bad or not given:
    raise ExportError(f'--platforms={text}: {bad[0] if bad else "empty"!r} is not one of '
                      f'{", ".join(PLATFORMS)} (a comma list)')
  return tuple(dict.fromkeys(given))


def check_out_dir(out_dir: str, force: bool) -> None:
  """Refuses a file, or a non-empty folder unless `force`, before anything is loaded."""
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise ExportError(f'{out_dir}: exists and is not a folder')
  if os.path.isdir(out_dir) and os.listdir(out_dir) and not force:
    raise ExportError(f'{out_dir}: exists and is not empty (pass --force to write into it)')
  parent = os.path.dirname(os.path.abspath(out_dir))
  if not os.path.isdir(parent):
    raise ExportError(f'{parent}: no such folder (to hold {os.path.basename(out_dir)})')


def commit() -> str:
  """The project's git commit (with '-dirty' for uncommitted changes), else 'unknown'."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=root, capture_output=True, text=True,
                          timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=root,
                           capture_output=True, text=True, timeout=10, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return 'unknown'
  return head + ('-dirty' if dirty else '') if head else 'unknown'


def artifact_function(predictor: Any):
  """points [B, input_points, 3] float32 → logits [B, C] float32, the weights closed over (so the
  export embeds them) and the XLA FPS (the Pallas kernel gives the same indices but is not
  portable). The predictor itself is left as it is."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  views = dataclasses.replace(predictor.task.views, fps_impl='xla')
  variables = predictor.variables

  def logits(points):
    return predictor._logits_fn(  # pylint: disable=protected-access
        variables, points, jnp.ones(points.shape[:1], bool), views)
  return logits


def export(predictor: Any, platforms: Sequence[str] = ('cpu',)) -> Any:
  """The predictor's classifier as a `jax.export.Exported` with a symbolic batch dimension."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax import export as jax_export  # pylint: disable=g-import-not-at-top
  batch, = jax_export.symbolic_shape('b')
  spec = jax.ShapeDtypeStruct((batch, predictor.input_points, 3), jnp.float32)
  return jax_export.export(jax.jit(artifact_function(predictor)),
                           platforms=tuple(platforms))(spec)


def metadata(predictor: Any, format_text: str) -> dict:
  """model.json's fields common to both formats."""
  import jax  # pylint: disable=g-import-not-at-top
  s = predictor.settings
  return {
      'format': format_text,
      'input': {'shape': ['B', s.points, 3], 'dtype': 'float32'},
      'output': {'shape': ['B', len(predictor.class_names)], 'dtype': 'float32',
                 'meaning': 'logits'},
      'input_points': s.points,
      'normalization': s.normalize,
      'up_axis': 'y',
      'preparation': preparation_text(predictor),
      'class_names': list(predictor.class_names),
      'weights': predictor.origin,
      'commit': commit(),
      'jax_version': jax.__version__,
      'config': json.loads(predictor.config.to_json_best_effort()),
  }


def preparation_text(predictor: Any) -> str:
  s = predictor.settings
  frame = ('files in a z-up frame turned to y-up, ' if s.up_axis == 'z' else '')
  norm = {'unit_sphere': 'centred on the mean and scaled so the farthest point has norm 1',
          'center': 'centred on the mean', 'none': 'as they are'}[s.normalize]
  return (f'{frame}farthest point sampling to {s.points} points (fewer: every point plus copies '
          f'drawn with replacement), then {norm}')


def write(out_dir: str, files: dict) -> list:
  """`files` ({name: bytes or str}) into `out_dir`, each written beside and renamed into place
  once all are written; a folder this made is removed again if that fails."""
  created = not os.path.isdir(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  staging = tempfile.mkdtemp(prefix='.export-', dir=out_dir)
  written = []
  try:
    for name, content in files.items():
      mode = 'w' if isinstance(content, str) else 'wb'
      with open(os.path.join(staging, name), mode) as f:
        f.write(content)
    for name in files:
      os.replace(os.path.join(staging, name), os.path.join(out_dir, name))
      written.append(os.path.join(out_dir, name))
  finally:
    shutil.rmtree(staging, ignore_errors=True)
    if created and len(written) < len(files):  # a failed write leaves no folder it made
      shutil.rmtree(out_dir, ignore_errors=True)
  return written


def stablehlo_files(predictor: Any, platforms: Sequence[str], platforms_arg: str) -> dict:
  """{file name: content} of the StableHLO export."""
  try:
    exported = export(predictor, platforms)
  except Exception as e:  # pylint: disable=broad-except
    # A platform whose lowering is not available here is the user's choice to drop, not a bug.
    if len(platforms) > 1 or tuple(platforms) != ('cpu',):
      raise ExportError(f'--platforms={platforms_arg}: lowering failed '
                        f'({type(e).__name__}: {errors.one_line(e)})') from None
    raise
  meta = metadata(predictor, 'jax.export (StableHLO), serialised with '
                             'jax.export.Exported.serialize')
  meta['platforms'] = list(platforms)
  readme = README.format(input_points=predictor.input_points,
                         num_classes=len(predictor.class_names), platforms=', '.join(platforms),
                         preparation=meta['preparation'])
  return {MODEL_FILE: exported.serialize(), META_FILE: json.dumps(meta, indent=2),
          README_FILE: readme}


def onnx_files(predictor: Any) -> dict:
  """{file name: content} of the ONNX export, checked with onnxruntime first."""
  from dapt_jax import onnx_export  # pylint: disable=g-import-not-at-top
  model = onnx_export.convert(artifact_function(predictor), predictor.input_points)
  checked = onnx_export.check(model, predictor)
  meta = metadata(predictor, f'ONNX opset {onnx_export.OPSET}, converted by jax2onnx')
  meta.update(input_name=onnx_export.INPUT_NAME, output_name=onnx_export.OUTPUT_NAME,
              opset=onnx_export.OPSET, converter=onnx_export.versions(),
              onnxruntime_check=checked)
  readme = onnx_export.README.format(
      opset=onnx_export.OPSET, input_name=onnx_export.INPUT_NAME,
      output_name=onnx_export.OUTPUT_NAME, input_points=predictor.input_points,
      num_classes=len(predictor.class_names), preparation=meta['preparation'])
  return {onnx_export.MODEL_FILE: model, META_FILE: json.dumps(meta, indent=2),
          README_FILE: readme}


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = _Parser(prog='python -m dapt_jax.export',
                   description=__doc__.split('\n\n')[1].strip())
  parser.add_argument('workdir', help='a training workdir, or a converted checkpoint with --config')
  parser.add_argument('out_dir', help='where model.stablehlo, model.json and README.md go')
  parser.add_argument('--config', default=None,
                      help="the run's config, e.g. configs/scanobjectnn.py:hardest (a converted "
                           "checkpoint); default: WORKDIR/config.json")
  parser.add_argument('--platforms', default='cpu',
                      help=f'a comma list of {", ".join(PLATFORMS)} (default: cpu)')
  parser.add_argument('--format', default='stablehlo', choices=FORMATS,
                      help='stablehlo (jax.export, default) or onnx (jax2onnx, optional)')
  parser.add_argument('--force', action='store_true', help='write into a non-empty OUT_DIR')
  args = parser.parse_args(argv)
  platforms = parse_platforms(args.platforms)
  if args.format == 'onnx':
    if platforms != ('cpu',):
      raise ExportError(f'--platforms={args.platforms}: for --format=stablehlo only (an ONNX '
                        'model runs wherever onnxruntime does)')
    from dapt_jax import onnx_export  # pylint: disable=g-import-not-at-top
    onnx_export.check_installed()
  check_out_dir(args.out_dir, args.force)
  from dapt_jax import serve  # pylint: disable=g-import-not-at-top  (JAX: after the checks)
  predictor = serve.load(args.workdir, args.config)
  if predictor.kind != 'classes':
    raise ExportError(f'{args.workdir}: a {predictor.config.get("task")} run; the export is for '
                      'classifiers')
  files = (onnx_files(predictor) if args.format == 'onnx'
           else stablehlo_files(predictor, platforms, args.platforms))
  for path in write(args.out_dir, files):
    print(f'wrote {path}')


if __name__ == '__main__':
  errors.run_cli(main, sys.argv[1:])
