"""A model of the training step on an accelerator, from what XLA says about the compiled step.

Without an accelerator at hand, the step's time on one can still be bounded from four counts the
benchmark takes from the compiled step (`jax_side.compiled_stats`): the matmul FLOPs, the bytes
the matmuls and the step move, the sequential loop iterations, and the kernels outside loops.
Each count meets one assumed rate of the device; the result is a range, not a measurement.

    time ≈ matmul FLOPs / (peak × efficiency)          (or the bytes / bandwidth, if larger)
         + loop iterations × time per iteration         (FPS: XLA loop or Pallas kernel)
         + kernels × launch time                        (the rest of the step, outside loops)
"""
from __future__ import annotations

from typing import Optional

# NVIDIA H100 SXM5 (data sheet): dense TF32 tensor-core peak (what XLA uses for float32 matmuls
# at JAX's default precision), dense BF16 peak, HBM3 bandwidth.
H100 = {'name': 'H100 SXM5', 'tf32_flops': 494.7e12, 'bf16_flops': 989.4e12,
        'hbm_bytes_per_s': 3.35e12}

ASSUMPTIONS = {
    # Share of the tensor-core peak reached by these matmuls (M = batch × 141 tokens, K = 384:
    # small, one wave per op): 0.3 to 0.6.
    'matmul_efficiency': (0.3, 0.6),
    # Share of HBM bandwidth reached by the memory-bound (fused elementwise) kernels.
    'hbm_efficiency': (0.5, 0.8),
    # One iteration of an XLA while loop on a GPU: its body's few small kernels plus the loop
    # predicate copied to the host, per iteration: 8 to 20 µs.
    'xla_loop_iteration_s': (8e-6, 20e-6),
    # One iteration of the Pallas FPS kernel (everything on chip; a handful of block-wide
    # reductions over N = 2048 values): 1 to 3 µs.
    'pallas_loop_iteration_s': (1e-6, 3e-6),
    # Per kernel outside loops (launch, or its share of a CUDA graph): 1 to 4 µs. The count is
    # XLA:CPU's, whose fusion is less aggressive than XLA:GPU's (a high estimate).
    'kernel_launch_s': (1e-6, 4e-6),
}

GOAL_STEP_S = 8e-3  # the full PB-T50-RS recipe (~107 k steps at batch 32) in 15 minutes


def project(rec: dict, batch: int = 32, fps_impl: str = 'xla', skip_full_fps: bool = False,
            device: Optional[dict] = None) -> Optional[dict]:
  """Projected (low, high) step time on `device` at `batch` from a JAX training record.

  The FLOP and byte counts scale with the batch from the measured one (`hlo_batch`); loop
  iteration and kernel counts do not depend on it. Returns None if the record lacks the counts.
  """
  device = device or H100
  need = ('dot_flops_per_step', 'dot_bytes_per_step', 'bytes_accessed_per_step', 'hlo_batch',
          'accelerator_loop_trips', 'entry_kernels')
  if any(rec.get(k) is None for k in need):
    return None
  scale = batch / rec['hlo_batch']
  a = ASSUMPTIONS
  flops = rec['dot_flops_per_step'] * scale
  trips = list(rec['accelerator_loop_trips'])
  if skip_full_fps and trips:
    trips = trips[1:]  # the training view's FPS over the whole cloud: the longest loop
  iters = sum(trips)
  per_iter = a['pallas_loop_iteration_s'] if fps_impl == 'pallas' else a['xla_loop_iteration_s']
  out = {}
  for i, side in enumerate(('low', 'high')):
    j = 1 - i  # the high time takes the low efficiency
    matmul_s = flops / (device['tf32_flops'] * a['matmul_efficiency'][j])
    # Low: only the matmuls' own operands and outputs move; high: every byte XLA:CPU's
    # (less fused) program moves.
    nbytes = (rec['dot_bytes_per_step'] if side == 'low' else rec['bytes_accessed_per_step'])
    memory_s = nbytes * scale / (device['hbm_bytes_per_s'] * a['hbm_efficiency'][j])
    loops_s = iters * per_iter[i]
    launch_s = rec['entry_kernels'] * a['kernel_launch_s'][i]
    body_s = max(matmul_s, memory_s) if side == 'low' else matmul_s + memory_s
    out[side] = {'matmul_s': matmul_s, 'memory_s': memory_s, 'loops_s': loops_s,
                 'launch_s': launch_s, 'total_s': body_s + loops_s + launch_s}
  out.update(batch=batch, fps_impl=fps_impl, skip_full_fps=skip_full_fps,
             loop_iterations=iters, device=device['name'], flops=flops)
  return out


def render(rec: dict, batch: int = 32) -> str:
  """The projection table for the four FPS settings, with the counts it starts from."""
  rows = []
  for impl in ('xla', 'pallas'):
    for skip in (False, True):
      p = project(rec, batch, impl, skip)
      if p is None:
        return 'Not projected: the record lacks XLA\'s counts.'
      lo, hi = p['low'], p['high']
      rows.append(
          f"| {impl} | {'on' if skip else 'off'} | {p['loop_iterations']} | "
          f"{lo['matmul_s'] * 1e3:.1f}–{hi['matmul_s'] * 1e3:.1f} | "
          f"{lo['memory_s'] * 1e3:.1f}–{hi['memory_s'] * 1e3:.1f} | "
          f"{lo['loops_s'] * 1e3:.1f}–{hi['loops_s'] * 1e3:.1f} | "
          f"{lo['launch_s'] * 1e3:.1f}–{hi['launch_s'] * 1e3:.1f} | "
          f"**{lo['total_s'] * 1e3:.1f}–{hi['total_s'] * 1e3:.1f}** | "
          f"{'≤' if hi['total_s'] <= GOAL_STEP_S else ('partly' if lo['total_s'] <= GOAL_STEP_S else '>')} 8 |")
  scale = batch / rec['hlo_batch']
  head = (f"From the compiled DAPT step at batch {rec['hlo_batch']}, scaled to batch {batch}: "
          f"matmuls {rec['dot_flops_per_step'] * scale / 1e9:.0f} GFLOP "
          f"({rec['dot_flops_per_step'] / rec['hlo_batch'] / 1e9:.2f} per sample); "
          f"XLA's total {rec.get('flops_per_step', 0) * scale / 1e9:.0f} GFLOP; bytes moved by "
          f"the matmuls {rec['dot_bytes_per_step'] * scale / 1e9:.1f} GB, by the whole step "
          f"(XLA:CPU's fusion) {rec['bytes_accessed_per_step'] * scale / 1e9:.1f} GB; sequential "
          f"loop iterations {sum(rec['accelerator_loop_trips'])} "
          f"({' + '.join(str(t) for t in rec['accelerator_loop_trips'])}); "
          f"{rec['entry_kernels']} kernels outside loops (XLA:CPU's count).")
  return '\n'.join([
      head, '',
      f"| FPS | skip_full_fps | loop iterations | matmuls ms | memory ms | loops ms | "
      f"launches ms | {H100['name']} step ms | goal ms |",
      '|---|---|---:|---:|---:|---:|---:|---:|---|', *rows])
