"""FLOPs from the compiled step, and model FLOPs utilisation (MFU) against known peaks."""
import jax

# Dense bf16 peak FLOP/s per JAX device. TPU v2/v3 devices are single cores (half a chip);
# from v4 on a device is a whole chip. First match wins, so specific names come first.
PEAK_FLOPS = (
    ('TPU v2', 22.5e12),
    ('TPU v3', 61.5e12),
    ('TPU v4', 275e12),
    ('TPU v5 lite', 197e12),
    ('TPU v5e', 197e12),
    ('TPU v5', 459e12),   # v5p
    ('TPU v6 lite', 918e12),
    ('TPU v6e', 918e12),
    ('A100', 312e12),
    ('H100 PCIe', 756e12),
    ('H100', 989e12),
    ('H200', 989e12),
)


def peak_flops(device_kind: str) -> float | None:
  """Peak dense bf16 FLOP/s of one device of this kind, or None when unknown (e.g. CPUs)."""
  for name, flops in PEAK_FLOPS:
    if name.lower() in device_kind.lower():
      return flops
  return None


def compiled_flops(compiled) -> float | None:
  """FLOPs of one run of a compiled program, per device (XLA's cost analysis)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # Some backends have no cost model.
    return None
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = (cost or {}).get('flops')
  return float(flops) if flops and flops > 0 else None


def utilisation(flops_per_step: float | None, steps_per_sec: float) -> dict:
  """{'flops_per_step', 'tflops_per_sec', 'mfu'}: global figures; mfu None if the peak is unknown.

  flops_per_step counts every device (per-device FLOPs x device count).
  """
  if not flops_per_step:
    return {'flops_per_step': None, 'tflops_per_sec': None, 'mfu': None}
  achieved = flops_per_step * steps_per_sec
  peak = peak_flops(jax.devices()[0].device_kind)
  return {'flops_per_step': flops_per_step, 'tflops_per_sec': achieved / 1e12,
          'mfu': achieved / (peak * jax.device_count()) if peak else None}


def throughput_summary(history, batch_size: int, tokens_per_example: int | None = None) -> dict:
  """A run's examples/s (and tokens/s), compile and train seconds, and FLOPs / MFU of the
  compiled step, from a `train.History`."""
  out = {'examples_per_sec': history.examples_per_sec}
  if tokens_per_example:
    out['tokens_per_sec'] = history.examples_per_sec * tokens_per_example
  out.update(utilisation(history.flops_per_step, history.examples_per_sec / batch_size))
  out.update(compile_seconds=history.compile_seconds, train_seconds=history.train_seconds)
  return out
