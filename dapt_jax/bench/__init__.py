"""Side-by-side benchmark of dapt-jax and the PyTorch reference (issue #6).

    python -m dapt_jax.bench --quick --out runs/bench        # < 10 min on 2 CPU cores
    python -m dapt_jax.bench --out runs/bench                # the full setting (>= 20 timed steps)

Every (framework, mode, batch, shape) configuration runs in a fresh child process
(`python -m dapt_jax.bench --one '<json spec>'`), so its peak memory (process RSS on CPU, the
device allocator's peak on GPU) is its own and the JAX and PyTorch runs do not disturb each other.

Modules:
  spec.py       the measurement spec (what one child measures) and its defaults
  clouds.py     synthetic input clouds (points on random ellipsoids)
  memory.py     peak / current process memory
  jax_side.py   one measurement with dapt_jax's real train / eval steps
  torch_side.py the same workload in PyTorch eager (tests/torch_reference.py)
  runner.py     the plan (modes, batches, scaling, bf16), child processes, the batch search
  report.py     the Markdown tables, JAX/PyTorch ratios and the issue's targets
"""
from dapt_jax.bench.report import render_markdown
from dapt_jax.bench.spec import make_spec
