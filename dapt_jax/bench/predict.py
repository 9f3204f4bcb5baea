"""python -m dapt_jax.bench --predict [--config=FILE.py:VARIANT] [--model=JSON] [--batches=1,8,64]

Serving throughput: clouds per second of `predictor.predict` (dapt_jax.load's API) and of the
exported StableHLO artifact (`python -m dapt_jax.export`, deserialised and called as its README
does), and of the ONNX export through onnxruntime when requirements-onnx.txt is installed, at
each batch size. The predictor is made from a freshly initialised model of the config (default
configs/scanobjectnn.py:hardest, full size; `--model` overrides fields, for smoke runs): speed
does not depend on the weights. Every path gets the same prepared clouds ([B, input_points, 3],
what the artifacts take; `predict` passes them through unchanged and returns probabilities, so
its figure includes its input checks and the softmax). Per batch size: one untimed call after
compilation, then `--steps` timed calls, median. Writes DIR/predict.json and DIR/predict.md.
"""
from __future__ import annotations

import datetime
import importlib.util
import json
import os
import platform
import sys
import time
from typing import Any, Callable, Optional

import numpy as np

DEFAULT_CONFIG = 'configs/scanobjectnn.py:hardest'
DEFAULT_BATCHES = (1, 8, 64)
DEFAULT_WARMUP = 1
DEFAULT_STEPS = 5


def fresh_predictor(config_spec: str, model: Optional[dict] = None) -> Any:
  """A `serve.Predictor` of a freshly initialised model (key `config.seed`) of the config."""
  from dapt_jax import serve  # pylint: disable=g-import-not-at-top
  from dapt_jax import tasks  # pylint: disable=g-import-not-at-top
  from dapt_jax import weights  # pylint: disable=g-import-not-at-top
  config = serve.read_config(config_spec)
  config.model.update(model or {})
  config.init_from = None
  task = tasks.get_task(config)
  net, variables, _ = weights.build(config, task)
  names = [f'class_{i}' for i in range(int(config.model.num_classes))]
  return serve.Predictor(config, None, task, net.clone(axis_name=None), variables,
                         f'freshly initialised (seed {config.seed})', names)


def time_calls(call: Callable[[np.ndarray], Any], clouds: np.ndarray, warmup: int,
               steps: int) -> dict:
  """The first call (compilation included), then `warmup` untimed and `steps` timed calls."""
  start = time.perf_counter()
  np.asarray(call(clouds))
  first = time.perf_counter() - start
  for _ in range(warmup):
    np.asarray(call(clouds))
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    np.asarray(call(clouds))  # np.asarray waits for the device
    times.append(time.perf_counter() - start)
  median = float(np.median(times))
  return {'first_call_s': first, 'median_s': median, 'clouds_per_s': len(clouds) / median}


def paths(predictor: Any, log: Callable[[str], None]) -> dict:
  """{name: call(prepared clouds) → array}: the predictor, the StableHLO artifact, and ONNX if
  its packages are installed; the artifacts made as `python -m dapt_jax.export` makes them."""
  from jax import export as jax_export  # pylint: disable=g-import-not-at-top
  from dapt_jax import export  # pylint: disable=g-import-not-at-top
  out = {'predictor.predict': predictor.predict}
  start = time.perf_counter()
  blob = export.export(predictor).serialize()
  artifact = jax_export.deserialize(bytearray(blob))
  log(f'StableHLO export: {time.perf_counter() - start:.1f} s, {len(blob) / 2**20:.1f} MiB')
  out['StableHLO artifact'] = artifact.call
  from dapt_jax import onnx_export  # pylint: disable=g-import-not-at-top
  if all(importlib.util.find_spec(p) for p in onnx_export.PACKAGES):
    start = time.perf_counter()
    model = onnx_export.convert(export.artifact_function(predictor), predictor.input_points)
    checked = onnx_export.check(model, predictor)
    log(f'ONNX export: {time.perf_counter() - start:.1f} s, {len(model) / 2**20:.1f} MiB, '
        f'largest logit difference from JAX {checked["max_abs_logit_difference"]:.3g} '
        f'(tolerance {checked["tolerance"]:.3g})')
    session = onnx_export.session(model)
    out['ONNX (onnxruntime)'] = lambda clouds: onnx_export.run(session, clouds)
  else:
    log('ONNX: skipped (pip install --no-deps -r requirements-onnx.txt to measure it)')
  return out


def render(records: list, header: dict) -> str:
  lines = ['# Serving throughput (python -m dapt_jax.bench --predict)', '']
  lines += [f'- {k}: {v}' for k, v in header.items()]
  batches = sorted({r['batch'] for r in records})
  names = list(dict.fromkeys(r['path'] for r in records))
  lines += ['', 'clouds/s (median of the timed calls; first call, compilation included, in '
            'brackets):', '', '| path | ' + ' | '.join(f'batch {b}' for b in batches) + ' |',
            '|---|' + '---:|' * len(batches)]
  for name in names:
    cells = []
    for b in batches:
      r = next(r for r in records if r['path'] == name and r['batch'] == b)
      cells.append(f"{r['clouds_per_s']:.1f} ({r['first_call_s']:.1f} s)")
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def main(out_dir: str, config_spec: str, model: Optional[dict], batches: list, warmup: int,
         steps: int, argv: list) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  log = lambda s: print(s, flush=True)
  start_all = time.perf_counter()
  predictor = fresh_predictor(config_spec, model)
  m = predictor.config.model
  log(f'{config_spec}: depth {m.depth}, width {m.trans_dim}, {m.num_group} groups of '
      f'{m.group_size}, input {predictor.input_points} points, FPS to '
      f'{predictor.config.data.num_points}')
  calls = paths(predictor, log)
  rng = np.random.default_rng(0)
  records = []
  for b in batches:
    clouds = predictor.prepare(rng.normal(size=(b, predictor.input_points, 3)))
    for name, call in calls.items():
      r = dict(path=name, batch=b, **time_calls(call, clouds, warmup, steps))
      log(f"{name}, batch {b}: {r['clouds_per_s']:.1f} clouds/s (first call "
          f"{r['first_call_s']:.1f} s)")
      records.append(r)
  device = jax.devices()[0]
  header = {
      'date': datetime.date.today().isoformat(),
      'command': 'python -m dapt_jax.bench ' + ' '.join(argv),
      'model': (f'{config_spec}, freshly initialised' + (f', overrides {json.dumps(model)}'
                                                          if model else '')
                + f': depth {m.depth}, width {m.trans_dim}, {m.num_group} groups of '
                f'{m.group_size}, {predictor.input_points} input points'),
      'device': f'{device.platform}: {device.device_kind}',
      'host': f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores, '
              f'Python {platform.python_version()}, JAX {jax.__version__}',
      'setting': f'{warmup} untimed + {steps} timed calls per batch size, the same prepared '
                 'clouds on every path',
      'wall time': f'{(time.perf_counter() - start_all) / 60:.1f} min',
  }
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'predict.json'), 'w') as f:
    json.dump({'header': header, 'records': records}, f, indent=1)
  md = render(records, header)
  with open(os.path.join(out_dir, 'predict.md'), 'w') as f:
    f.write(md)
  print(md, file=sys.stdout, flush=True)
